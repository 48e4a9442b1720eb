"""A client that is stopped (SIGSTOP) for longer than the keepalive allows
and then continued goes on training: the main server cuts its silent
connection (keepalive detects a dead peer), and the client's Train stream
reconnects, says hello again and sends its next step over the new call.

Keepalive intervals are scaled down (0.5-1 s) on both ends, so the stop
needs to outlast them only, and the test waits for the server to have cut
the call rather than for a time. On SIGCONT the client's next read meets
UNAVAILABLE "ping timeout", the error that ended such clients before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from fedsllm.proto import main_server_pb2_grpc
from fedsllm.wire import rpc

from .test_reconnect import FakeMainServer

REPO = Path(__file__).resolve().parents[2]

SCALED = {
    "grpc.keepalive_time_ms": 500,
    "grpc.keepalive_timeout_ms": 500,
    "grpc.http2.min_ping_interval_without_data_ms": 250,
}
PING_TIMEOUT = ("grpc.http2.ping_timeout_ms", 500)
"""gRPC waits this long for a keepalive ping's ack (60 s by default) before it
closes the transport."""

CLIENT = """
import sys
import torch
from fedsllm.wire import rpc

options = dict(rpc.CHANNEL_OPTIONS)
options.update({"grpc.keepalive_time_ms": 1000, "grpc.keepalive_timeout_ms": 500})
rpc.CHANNEL_OPTIONS = tuple(options.items())
from client.remote import MainServerStream

policy = rpc.RetryPolicy(seed=0, base_s=0.05, cap_s=0.5, budget_s=60.0)
stream = MainServerStream(sys.argv[1], 0, "h", "float32", 4096, retry=policy)
x = torch.ones(1, 2, 4)
mask = torch.ones(1, 2, dtype=torch.int64)
stream.send_step(0, 0, True, x, mask, mask)
stream.receive_reply(0, 0)
print("ready", flush=True)
sys.stdin.readline()
stream.send_step(0, 1, True, x, mask, mask)
reply, _ = stream.receive_reply(0, 1)
assert torch.equal(reply.grad, 2 * x)
print("done", stream.num_reconnects, flush=True)
stream.close()
"""


def _line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(f"client exited with {proc.returncode} before answering")
    return line.strip()


def _scaled_server(monkeypatch) -> tuple[FakeMainServer, grpc.Server, int]:
    """A FakeMainServer whose keepalive is scaled down (it cuts a silent peer
    within about a second): the servicer, the server and its port."""
    options = (*((k, SCALED.get(k, v)) for k, v in rpc.SERVER_OPTIONS), PING_TIMEOUT)
    monkeypatch.setattr(rpc, "SERVER_OPTIONS", options)
    servicer = FakeMainServer(hold=False)
    server, port = rpc.create_server(
        "127.0.0.1:0",
        [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(servicer, s)],
        allow_unauthenticated=True,
    )
    return servicer, server, port


def test_a_stopped_client_continues_after_the_server_cut_it(monkeypatch) -> None:
    servicer, server, port = _scaled_server(monkeypatch)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert _line(proc) == "ready"
        os.kill(proc.pid, signal.SIGSTOP)
        # The server's keepalive pings go unanswered: it cuts the call.
        assert servicer.ended.wait(60), "the server never cut the stopped client"
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _line(proc) == "done 1"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        rpc.stop_server(server, grace_s=0)
    assert servicer.hellos == 2  # a new Train call after the cut
    assert servicer.steps == [(0, 0), (0, 1)]


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("SIGSTOP/SIGCONT on Linux")


def test_an_idle_client_still_answers_the_servers_pings(monkeypatch) -> None:
    """The client's Train stream runs its event loop only while a step goes
    out and its reply comes in (fedsllm.wire.train_client). Between steps
    (the client computing, here sleeping) gRPC core still answers the
    server's keepalive pings: the server, which cuts a silent peer within
    about a second, leaves the call alone for 4 s, and the next step goes
    over the same call."""
    import time

    import torch

    from client.remote import MainServerStream

    servicer, server, port = _scaled_server(monkeypatch)
    try:
        stream = MainServerStream(f"127.0.0.1:{port}", 0, "h", "float32", 4096)
        x = torch.ones(1, 2, 4)
        mask = torch.ones(1, 2, dtype=torch.int64)
        stream.send_step(0, 0, True, x, mask, mask)
        stream.receive_reply(0, 0)
        time.sleep(4.0)  # the loop idle: nothing of this process's Python runs for gRPC
        stream.send_step(0, 1, True, x, mask, mask)
        reply, _ = stream.receive_reply(0, 1)
        stream.close()
    finally:
        rpc.stop_server(server, grace_s=0)
    assert torch.equal(reply.grad, 2 * x)
    assert stream.num_reconnects == 0 and servicer.hellos == 1
