"""Ctrl-C on `fedsllm run` at any point of start-up leaves no process behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.e2e.conftest import overrides, run_env, stop_run, wait_no_run_pids

pytestmark = pytest.mark.slow


STARTED = re.compile(r"started (\S+) \(pid (\d+)[,)]")


@pytest.mark.parametrize("interrupt_after", ["main_server", "client_0"])
def test_ctrl_c_during_startup_stops_every_role(tmp_path, interrupt_after) -> None:
    """SIGINT to the launcher right after a given role started: every role it
    started exits, the launcher says so and exits 130.

    With 12 clients, SIGINT after client_0 lands while the others are still
    being forked, where the old launcher lost track of them."""
    env = run_env(tmp_path)
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
        # Before any cleanup: the launcher alone must have stopped every role.
        left = wait_no_run_pids(tmp_path)
    finally:
        stop_run(launcher, tmp_path)
    reader.join(timeout=10)
    assert code == 130, "".join(lines[-30:])
    assert any("interrupted" in line for line in lines)
    assert "fed_server" in pids and interrupt_after in pids
    assert left == [], f"left running: {left} (roles started: {pids})"
