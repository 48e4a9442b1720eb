"""SIGTERM stops `python -m fed_server` while a PullGlobal waits for a round
that will not close: the pull ends with UNAVAILABLE "fed server stopping" and
the process exits 0 (it used to wait in PullGlobal for up to 3600 s, so the
launcher had to kill it). The server runs as its own process on port 0 and is
signalled and waited on by its own pid. The wait bound is a hang guard (the
launcher's grace is 10 s), not a speed target."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc

from fedsllm.config import load_scenario
from fedsllm.launch import write_scenario
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.wire.rpc import Security, make_channel
from tests.fed_server.process_lines import read_lines, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "client-0-token-for-the-sigterm-test"
HANG_GUARD_S = 60.0


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    scenario = load_scenario(
        None, ["model.pretrain_steps=0", "data.seq_len=16", "clients.num_clients=2"]
    )
    scenario_file = write_scenario(run_dir, scenario)
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"client/0": TOKEN}))
    env = {**os.environ, "FEDSLLM_PEER_TOKENS": str(peers), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "fed_server", "--log-level", "DEBUG",
        "--scenario", str(scenario_file), "--run-dir", str(run_dir),
        "--bind", "127.0.0.1:0", "--control-bind", "127.0.0.1:0", "--telemetry-wait-s", "0.5",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    return proc, read_lines(proc.stderr)


def test_sigterm_releases_a_waiting_pull_and_the_server_exits(tmp_path) -> None:
    proc, lines = _start(tmp_path)
    seen: list[str] = []
    try:
        port = int(wait_for_line(lines, r"serving FedServer on port (\d+)", seen)[1])
        channel = make_channel(f"127.0.0.1:{port}", Security(token=TOKEN))
        stub = pb_grpc.FedServerStub(channel)
        hashed = json.loads((tmp_path / "run" / "scenario.json").read_text())["scenario_hash"]
        stub.Join(pb.JoinRequest(client_id=0, num_samples=10, scenario_hash=hashed), timeout=30)
        # Client 1 never joins: round 0 never closes.
        call = stub.PullGlobal(pb.PullGlobalRequest(client_id=0, round=0), timeout=600)
        errors: list[grpc.RpcError] = []

        def pull() -> None:
            try:
                list(call)
            except grpc.RpcError as err:
                errors.append(err)

        puller = threading.Thread(target=pull)
        puller.start()
        wait_for_line(lines, r"a pull waits for the global adapter of round 0", seen)
        proc.send_signal(signal.SIGTERM)
        puller.join(HANG_GUARD_S)
        assert not puller.is_alive()
        (err,) = errors
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "fed server stopping")
        assert proc.wait(timeout=HANG_GUARD_S) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()  # by its own pid: only a failed test gets here
            proc.wait()


def test_sigterm_while_the_servers_start_is_a_clean_stop(tmp_path) -> None:
    """A SIGTERM before the fed server is serving (the launcher stopping a run
    early) sets the stop: the server comes up, stops at once and exits 0. The
    handlers used to be installed only once it served, so such a signal killed
    it by default (exit -15), and a pull woken in that window could see its
    socket close instead of "fed server stopping"."""
    proc, lines = _start(tmp_path)
    seen: list[str] = []
    try:
        wait_for_line(lines, r"channels: plain gRPC", seen)  # logged before any server starts
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_GUARD_S) == 0, "".join(seen[-40:])
        wait_for_line(lines, r"fed_server INFO fed_server: stopped", seen)
    finally:
        if proc.poll() is None:
            proc.kill()  # by its own pid: only a failed test gets here
            proc.wait()
