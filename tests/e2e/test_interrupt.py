"""Ctrl-C on `fedsllm run` at any point of start-up leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import overrides
from tests.fedsllm.test_launch import _wait_gone

pytestmark = pytest.mark.slow


def _is_ours(pid: int, tmp_path) -> bool:
    """Whether `pid` still runs a role of this test's run (its command names tmp_path),
    so a reused pid is never signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(tmp_path) in cmdline


STARTED = re.compile(r"started (\S+) \(pid (\d+)[,)]")


@pytest.mark.parametrize("interrupt_after", ["main_server", "client_0"])
def test_ctrl_c_during_startup_stops_every_role(tmp_path, interrupt_after) -> None:
    """SIGINT to the launcher right after a given role started: every role it
    started exits, the launcher says so and exits 130.

    With 12 clients, SIGINT after client_0 lands while the others are still
    being forked, where the old launcher lost track of them."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "fedsllm",
        "--log-level",
        "INFO",
        "run",
        "--clients",
        "12",
        "--rounds",
        "50",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
        *overrides(),
    ]
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pids: dict[str, int] = {}
    lines: list[str] = []
    seen = threading.Event()

    def read_stderr() -> None:
        assert launcher.stderr is not None
        for line in launcher.stderr:
            lines.append(line)
            match = STARTED.search(line)
            if match:
                pids[match.group(1)] = int(match.group(2))
                if match.group(1) == interrupt_after and not seen.is_set():
                    launcher.send_signal(signal.SIGINT)
                    seen.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert seen.wait(120), "".join(lines[-30:])
        code = launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        # A launcher killed above cannot clean up: stop, by their own pids, the
        # roles it reported, so a failing run of this test leaves nothing behind.
        leftover = [pid for pid in pids.values() if _is_ours(pid, tmp_path)]
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    reader.join(timeout=10)
    assert code == 130, "".join(lines[-30:])
    assert any("interrupted" in line for line in lines)
    assert "fed_server" in pids and interrupt_after in pids
    assert _wait_gone(list(pids.values())) == [], f"left running: {pids}"
