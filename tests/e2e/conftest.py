"""Helpers for tests that run `fedsllm run` as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "policy.name='fixed_steps'",
    "link.backend='none'",
    "link.emulate_compute=false",
    "training.eval_every=1",
    "model.pretrain_steps=0",
    "data.seq_len=32",
    "data.num_train_samples=96",
    "data.num_val_samples=16",
    "training.batch_size=4",
    "training.num_val_batches=2",
]
"""Overrides that make a run take seconds: tiny random base, short sequences, no
controller and no emulation (tests that want them override these)."""


RUN_MARK = "FEDSLLM_TEST_RUN"
"""Set, to the test's directory, in the environment of every `fedsllm` a test
here starts. The launcher hands its environment on to every role, and the
client host to the clients it forks, so a test's processes are exactly those
whose environment holds its mark: whatever their command line (a forked
client's is the client host's, which names no path of the run), and never a
process that reused one of their pids."""


def run_env(cwd: Path) -> dict[str, str]:
    """The environment a test starts `fedsllm` in: offline, one thread, marked."""
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **{RUN_MARK: str(cwd)})


def run_pids(cwd: Path) -> list[int]:
    """Pids of the processes started by `fedsllm` under run_env(cwd), still running."""
    mark = f"\0{RUN_MARK}={cwd}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = b"\0" + (entry / "environ").read_bytes() + b"\0"
        except OSError:  # gone meanwhile, a zombie (exited, not reaped), or not ours
            continue
        if mark in environ:
            pids.append(int(entry.name))
    return pids


def wait_no_run_pids(cwd: Path, timeout_s: float = 10.0) -> list[int]:
    """run_pids(cwd) once it is empty, or what is still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := run_pids(cwd)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def stop_run(launcher: subprocess.Popen[str], cwd: Path) -> None:
    """A test's cleanup after a `fedsllm run` it started, on every path: SIGTERM
    to a launcher still running (its own cleanup stops the roles), SIGKILL after
    60 s, then SIGKILL, each by its pid, to any process of the run still there
    (a killed launcher cannot stop them). A test that asserts nothing is left
    checks it before calling this."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
    for pid in run_pids(cwd):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def fedsllm(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m fedsllm ARGS` in `cwd`, marked (run_env). On its timeout the
    launcher is killed, and then, by pid, every process of its run it can no
    longer stop (parent-death signals need setpriv, which a host may lack)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "fedsllm", *args],
            cwd=cwd,
            env=run_env(cwd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        for pid in run_pids(cwd):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise


def overrides(*items: str) -> list[str]:
    out: list[str] = []
    for item in (*TINY, *items):
        out += ["--set", item]
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FEDSLLM_CACHE", str(path))
    return path


@pytest.fixture
def netns_run(tmp_path) -> Iterator[str]:
    """The network-namespace run id of `fedsllm run --out tmp_path/run`
    (fedsllm.launch.netns_run_id). Whatever of that run's namespaces and links
    is left when the test ends is deleted: a run killed on its timeout cannot
    clean up after itself. A test that asserts the run left nothing does so in
    its body, before this teardown."""
    from fedsllm.launch import netns_run_id
    from fedsllm.link.netns import project_footprint

    run_id = netns_run_id((tmp_path / "run").resolve())
    yield run_id
    left = project_footprint(run_id)
    # A namespace takes its veth ends and bridge with it; what is left in this
    # namespace and named for the run goes after.
    for ns in sorted(left.namespaces):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    for link in sorted(project_footprint(run_id).links):
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


STARTED = re.compile(r"started (\S+) \(pid (\d+)[,)]")
"""The launcher's INFO line for each process it starts (forked clients too)."""


class LauncherLines:
    """A launcher's stderr (a pipe) read on a thread of its own: every line, and the
    pid of each process it says it started (restarted ones: the latest)."""

    def __init__(self, launcher: subprocess.Popen[str]) -> None:
        self.pids: dict[str, int] = {}
        self.lines: list[str] = []
        self._launcher = launcher
        self._stderr = launcher.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._stderr is not None
        for line in self._stderr:
            self.lines.append(line)
            if match := STARTED.search(line):
                self.pids[match.group(1)] = int(match.group(2))

    def tail(self, num_lines: int = 40) -> str:
        return "".join(self.lines[-num_lines:])

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)

    def wait_for_rounds(self, run_dir: Path, num_rounds: int, timeout_s: float = 240) -> None:
        """Until the run in `run_dir` has aggregated `num_rounds` rounds; the launcher
        exiting first, or the time running out, fails with its last lines."""
        deadline = time.monotonic() + timeout_s
        while rounds_done(run_dir) < num_rounds:
            assert self._launcher.poll() is None, self.tail()
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.2)


def rounds_done(run_dir: Path) -> int:
    """Rounds the run in `run_dir` has aggregated so far, from its trace."""
    from fedsllm.trace import read_records

    try:
        return sum(1 for r in read_records(run_dir / "trace") if r["name"] == "round_done")
    except (OSError, ValueError):
        return 0
