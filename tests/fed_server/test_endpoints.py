"""A run's fed server is found from its run directory: `python -m fed_server`
writes RUN_DIR/endpoints.json with the ports it actually bound (port 0 here,
as the launcher's runs do), and `fedsllm watch RUN_DIR` follows it as the
watcher until it stops. Before, the port was only in logs/fed_server.log.
Both processes run on loopback and are stopped by their own pids."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from fedsllm.config import load_scenario
from fedsllm.launch import write_scenario
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.telemetry import socket_address
from fedsllm.wire.rpc import Security, make_channel, wait_healthy
from tests.fed_server.process_lines import read_lines, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
WATCHER_TOKEN = "watcher-token-for-the-endpoints-test"
HANG_GUARD_S = 60.0


def test_endpoints_json_names_the_bound_ports_and_watch_follows_the_run(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert socket_address(run_dir) is not None, "tmp path too long for the test"
    scenario = load_scenario(
        None, ["model.pretrain_steps=0", "data.seq_len=16", "clients.num_clients=2"]
    )
    scenario_file = write_scenario(run_dir, scenario)
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"watcher": WATCHER_TOKEN}))
    token_file = tmp_path / "watcher.token"
    token_file.write_text(WATCHER_TOKEN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name in ("FEDSLLM_TOKEN", "FEDSLLM_TOKEN_FILE", "FEDSLLM_PEER_TOKENS"):
        env.pop(name, None)
    fed_cmd = [
        sys.executable, "-m", "fed_server", "--log-level", "DEBUG",
        "--scenario", str(scenario_file), "--run-dir", str(run_dir),
        "--bind", "127.0.0.1:0", "--control-bind", "127.0.0.1:0", "--telemetry-wait-s", "0.5",
    ]  # fmt: skip
    fed = subprocess.Popen(
        fed_cmd,
        cwd=ROOT,
        env={**env, "FEDSLLM_PEER_TOKENS": str(peers)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        fed_lines = read_lines(fed.stderr)
        ends_file = run_dir / "endpoints.json"
        wait_for_line(fed_lines, f"endpoints in {re.escape(str(ends_file))}", seen)
        ends = json.loads(ends_file.read_text())
        assert set(ends) == {"fed_address", "control_address", "telemetry_socket", "pid"}
        assert ends["pid"] == fed.pid and ends["telemetry_socket"] == socket_address(run_dir)
        ports = set()
        for key in ("fed_address", "control_address"):
            host, _, port = ends[key].rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0  # the port bound, not the 0 asked for
            ports.add(int(port))
            # Each is in the log too, where a user had to look before.
            assert any(f"port {port}" in line for line in seen), key
        assert len(ports) == 2
        wait_healthy(ends["control_address"], timeout_s=10)
        wait_healthy(ends["fed_address"], timeout_s=10)
        # The watcher's token reads the status there, and may not join.
        with make_channel(ends["fed_address"], Security(token=WATCHER_TOKEN)) as channel:
            stub = pb_grpc.FedServerStub(channel)
            assert stub.Status(pb.StatusRequest(), timeout=10).num_rounds > 0
            try:
                stub.Join(pb.JoinRequest(client_id=0, num_samples=1), timeout=10)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                raise AssertionError("a watcher joined")
        watch = subprocess.Popen(
            [sys.executable, "-m", "fedsllm", "watch", str(run_dir)],
            cwd=ROOT,
            env={**env, "FEDSLLM_TOKEN_FILE": str(token_file)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The controller's plan is the fed server's first record.
        first = json.loads(wait_for_line(read_lines(watch.stdout), r"^\{", seen).string)
        assert (first["source"], first["name"]) == ("fed_server", "plan")
        fed.send_signal(signal.SIGTERM)
        assert fed.wait(timeout=HANG_GUARD_S) == 0
        # No launcher runs the directory: the fed server's stop ends the watch.
        assert watch.wait(timeout=HANG_GUARD_S) == 0, watch.stderr.read()
    finally:
        for proc in (watch, fed):
            if proc is not None and proc.poll() is None:
                proc.kill()  # by its own pid: only a failed test gets here
                proc.wait()
