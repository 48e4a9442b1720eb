"""The client fork server (client/host.py) killed from outside mid-run: a SIGKILL
to its pid alone used to leave both clients it forked running, orphaned, after
the launcher had exited and recorded -9 for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.conftest import LauncherLines, overrides, read_json, run_env, run_pids, stop_run

pytestmark = pytest.mark.slow


def test_a_client_host_killed_mid_run_leaves_no_client_behind(tmp_path) -> None:
    """SIGKILL to client_host after the first round: the run ends (exit 1, the host
    named as the failure), no process of it outlives the launcher, and the
    clients' exit codes, which nobody reported, are null with the reason."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "fedsllm", "--log-level", "INFO", "run",
        "--clients", "2", "--rounds", "200", "--quiet", "--restart", "on-failure",
        "--out", str(out), *overrides(),
    ]  # fmt: skip
    launcher = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=run_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = LauncherLines(launcher)
    try:
        stderr.wait_for_rounds(out, 1)
        host = stderr.pids["client_host"]
        assert host in run_pids(tmp_path), f"pid {host} is not this run's client_host"
        os.kill(host, signal.SIGKILL)
        code = launcher.wait(120)
        left = run_pids(tmp_path)  # at once: the launcher must not exit before them
    finally:
        stop_run(launcher, tmp_path)
        stderr.join()
    assert code == 1, stderr.tail()
    assert left == [], f"left running after the launcher exited: {left}"
    summary = read_json(out / "summary.json")
    assert summary["failed"]["process"] == "client_host"
    assert summary["exit_codes"]["client_host"] == -signal.SIGKILL
    clients = {"client_0", "client_1"}
    assert {name: summary["exit_codes"][name] for name in clients} == dict.fromkeys(clients)
    assert set(summary["exit_unknown"]) == clients
