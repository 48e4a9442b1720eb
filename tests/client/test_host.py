"""The client host (client/host.py) stops a child that was stopped (SIGSTOP, as a
fault injection does): SIGTERM alone would stay pending until a SIGCONT, and
the host would wait for that child for ever."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from fedsllm.wire.rpc import free_port

REPO = Path(__file__).resolve().parents[2]


def _event(proc: subprocess.Popen, timeout_s: float = 120.0) -> dict:
    """The host's next event; fails (instead of hanging) when none comes."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the host sent no event"
    line = proc.stdout.readline()
    assert line, f"host exited with {proc.poll()}"
    return json.loads(line)


def test_host_stops_a_stopped_child(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    host = subprocess.Popen(
        [sys.executable, "-m", "client.host"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    child = None
    try:
        assert _event(host)["event"] == "ready"
        # A client that waits for a fed server nobody serves.
        argv = ["--client-id", "0", "--fed-address", f"127.0.0.1:{free_port()}",
                "--work-dir", str(tmp_path / "w0")]  # fmt: skip
        request = {"op": "start", "name": "client_0", "argv": argv, "log": str(tmp_path / "c.log")}
        host.stdin.write(json.dumps(request) + "\n")
        host.stdin.flush()
        started = _event(host)
        assert (started["event"], started["seq"]) == ("started", 1)
        child = started["pid"]
        os.kill(child, signal.SIGSTOP)
        host.send_signal(signal.SIGTERM)
        exited = _event(host, 60.0)  # never comes without the host's SIGCONT
        assert (exited["event"], exited["code"]) == ("exited", -signal.SIGTERM)
        assert (exited["pid"], exited["seq"]) == (child, 1)
        assert host.wait(timeout=60) == 0
    finally:
        if host.poll() is None:
            if child is not None:
                os.kill(child, signal.SIGKILL)
            host.kill()
            host.wait(timeout=10)
