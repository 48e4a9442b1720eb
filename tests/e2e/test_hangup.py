"""A launcher whose terminal or reader goes away: SIGHUP (the terminal closed, or
`kill -HUP`) is a clean stop like SIGTERM, and an output pipe whose reader exits
(`fedsllm run ... | head`) drops the output while the run goes on to its end.
Either way the run directory says what happened (faults.json, summary.json)
and no process of the run is left."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from fedsllm.launch import read_fault_log
from tests.e2e.conftest import overrides, read_json, run_env, stop_run, wait_no_run_pids

pytestmark = pytest.mark.slow


def _launcher(
    tmp_path: Path,
    *args: str,
    stdout: Any,
    stderr: Any,
    stdin: Any = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """`fedsllm run` of a tiny two-client scenario into tmp_path/run (marked: run_env),
    SIGHUP at its default (`preexec` runs after that, in the child)."""

    def child() -> None:
        _hangup_as_by_default()
        if preexec is not None:
            preexec()

    cmd = [
        *(sys.executable, "-m", "fedsllm", "--log-level", "INFO", "run", "--clients", "2"),
        *args,
        *("--out", str(tmp_path / "run")),
        *overrides(),
    ]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=run_env(tmp_path),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=child,
    )


def _hangup_as_by_default() -> None:
    """The launcher as a terminal starts it, whatever started pytest: under `nohup`
    (a CI script's) SIGHUP is ignored, the launcher keeps it so, and these tests
    would test nohup instead."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _wait_first_round(run_dir: Path, launcher: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the fed server has aggregated round 0 (its checkpoint says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and launcher.poll() is None:
        try:
            if json.loads((run_dir / "checkpoint.json").read_text())["completed_round"] >= 0:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no round aggregated (launcher exit code {launcher.poll()})")


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGTERM"])
def test_a_hangup_mid_run_stops_it_cleanly_and_records_it(tmp_path, signame) -> None:
    """SIGHUP as SIGTERM: every role stopped by the launcher itself, exit 128+N,
    faults.json and summary.json saying the run was interrupted by that signal
    (the old launcher died on SIGHUP with its launch unrecorded and no summary)."""
    signum = signal.Signals[signame]
    run_dir = tmp_path / "run"
    with (tmp_path / "out.txt").open("wb") as out, (tmp_path / "err.txt").open("wb") as err:
        launcher = _launcher(tmp_path, "--rounds", "500", "--quiet", stdout=out, stderr=err)
    try:
        _wait_first_round(run_dir, launcher, 240)
        launcher.send_signal(signum)
        code = launcher.wait(timeout=90)
        left = wait_no_run_pids(tmp_path)  # the launcher alone stopped them
    finally:
        stop_run(launcher, tmp_path)
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 128 + signum, stderr[-3000:]
    assert left == []
    launch = read_fault_log(run_dir)[-1]
    assert launch["completed"] is False
    assert launch["failed"] == f"interrupted by {signame}"
    summary = read_json(run_dir / "summary.json")
    assert summary["ok"] is False
    assert summary["interrupted"] == f"interrupted by {signame}"
    assert summary["resilience"]["launches"][-1]["failed"] == f"interrupted by {signame}"
    assert summary["rounds"], "the rounds done before the signal are summarized"
    assert f"interrupted by {signame}" in stderr
    assert f"fedsllm run --resume {run_dir}" in stderr
    assert "Traceback" not in stderr
    assert not (run_dir / "report.md").exists()


def test_the_terminal_closing_stops_the_run_cleanly_and_records_it(tmp_path) -> None:
    """The real thing: the launcher's terminal (a pty whose master closes) hangs
    up. The kernel sends SIGHUP, and every later write to the terminal fails
    with EIO: the launcher stops every role, records the interrupt in
    faults.json and summary.json and exits 129, its last words dropped."""
    master, slave = pty.openpty()

    def own_terminal() -> None:  # a session of its own, the pty its terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    run_dir = tmp_path / "run"
    launcher = _launcher(
        tmp_path, "--rounds", "500", stdin=slave, stdout=slave, stderr=slave, preexec=own_terminal
    )
    os.close(slave)
    shown: list[bytes] = []

    def drain() -> None:  # what the terminal shows; the live display must not block
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                shown.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        _wait_first_round(run_dir, launcher, 240)
        os.close(master)  # the terminal window closes
        code = launcher.wait(timeout=90)
        left = wait_no_run_pids(tmp_path)
    finally:
        stop_run(launcher, tmp_path)
    assert code == 128 + signal.SIGHUP, b"".join(shown)[-3000:].decode(errors="replace")
    assert left == []
    launch = read_fault_log(run_dir)[-1]
    assert (launch["completed"], launch["failed"]) == (False, "interrupted by SIGHUP")
    summary = read_json(run_dir / "summary.json")
    assert (summary["ok"], summary["interrupted"]) == (False, "interrupted by SIGHUP")
    assert summary["rounds"]


def _read_lines(pipe: IO[bytes], count: int) -> list[bytes]:
    return [pipe.readline() for _ in range(count)]


@pytest.mark.parametrize("closed", ["stdout+stderr", "stdout"])
def test_a_closed_output_pipe_drops_the_output_and_the_run_goes_on(tmp_path, closed) -> None:
    """`fedsllm run 2>&1 | head -3` (one pipe for both streams, closed after three
    lines) and `fedsllm run | head -1` (stdout alone, closed before its one line):
    the run completes, exit 0, with its summary, report and faults.json, which
    names the stream whose output was dropped. The old launcher died at the next
    write (rich's broken-pipe exit, exit 1), its launch unrecorded."""
    run_dir = tmp_path / "run"
    both = closed == "stdout+stderr"
    with (tmp_path / "err.txt").open("wb") as err:
        launcher = _launcher(
            tmp_path,
            "--rounds",
            "3",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if both else err,
        )
    assert launcher.stdout is not None
    try:
        seen = _read_lines(launcher.stdout, 3) if both else []
        launcher.stdout.close()  # the reader exits, as head does
        code = launcher.wait(timeout=300)
        left = wait_no_run_pids(tmp_path)
    finally:
        stop_run(launcher, tmp_path)
    stderr = "" if both else (tmp_path / "err.txt").read_text()
    assert code == 0, stderr[-3000:]
    assert left == []
    if both:
        assert b"fedsllm run" in seen[0]
    launch = read_fault_log(run_dir)[-1]
    assert launch["completed"] is True and launch["failed"] is None
    assert "stdout" in launch["output_dropped"]
    assert ("stderr" in launch["output_dropped"]) is both
    summary = read_json(run_dir / "summary.json")
    assert summary["ok"] is True and summary.get("interrupted") is None
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert (run_dir / "report.md").exists()
    if not both:  # stderr stayed open: everything was said there, no traceback
        assert "report: report.md" in stderr
        assert "Traceback" not in stderr and "Broken pipe" not in stderr
