"""SIGTERM stops the main server within a few seconds even while a Train
handler is blocked: in downlink pacing (a slow link: pacing ends, the computed
gradient goes out whole) or waiting on its step's result (a worker that never
finishes: the client gets UNAVAILABLE and would re-send). The server runs as its own process
(tests/main_server/sigterm_harness.py, the real service, queue, pacing and
main_server.__main__.serve_until_stopped) on a free port; it is signalled and
waited on by its own pid. The bound is functional (the launcher's grace is
10 s), not a speed target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from fedsllm.proto import main_server_pb2 as pb
from fedsllm.proto import main_server_pb2_grpc as pb_grpc
from fedsllm.wire.messages import StepHeaderInfo, TrainHelloInfo
from fedsllm.wire.tensors import tensor_to_frame
from fedsllm.wire.train import step_upload_requests, train_request

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("sigterm_harness.py")
EXIT_BOUND_S = 15.0
HASH = "sigterm-test"
B, T, D = 2, 16, 64


def _requests(downlink_bps: float, hold: threading.Event) -> Iterator[pb.TrainRequest]:
    """Hello, one train step, then an open stream (a client waiting for its reply)."""
    yield train_request(TrainHelloInfo(client_id=0, scenario_hash=HASH, wire_dtype="float32"))
    g = torch.Generator().manual_seed(0)
    tensors = {
        "activations": torch.randn(B, T, D, generator=g),
        "attention_mask": torch.ones(B, T, dtype=torch.int64),
        "labels": torch.randint(3, 259, (B, T), generator=g),
    }
    frames = [tensor_to_frame(name, value) for name, value in tensors.items()]
    header = StepHeaderInfo(
        round=0,
        step=0,
        mode="train",
        downlink_bps=downlink_bps,
        tensor_names=tuple(f.name for f in frames),
    )
    for item in step_upload_requests(header, frames, 4096):
        yield item if isinstance(item, pb.TrainRequest) else train_request(item)
    hold.wait(60)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS), str(tmp_path / "state"), mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        proc.wait()
        pytest.fail(f"harness did not start: {line!r}")
    return proc, int(line.split()[1])


@pytest.mark.parametrize("mode", ["pace", "step"])
def test_sigterm_stops_the_server_while_a_handler_is_blocked(tmp_path: Path, mode: str) -> None:
    proc, port = _start(tmp_path, mode)
    hold = threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # 100 bit/s: each 1 KiB chunk of the gradient takes 80 s to pace.
            responses = pb_grpc.MainServerStub(channel).Train(_requests(100.0, hold), timeout=120)
            assert next(responses).HasField("welcome")
            if mode == "pace":
                # The step's result came; the handler now paces the gradient.
                assert next(responses).HasField("result")
            else:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "worker entered"
            os.kill(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=EXIT_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {EXIT_BOUND_S} s after SIGTERM ({mode})")
            assert code == 0
            received = 0
            with pytest.raises(grpc.RpcError) as err:
                for response in responses:
                    received += len(response.chunk.data)
            if mode == "pace":
                # Pacing ended at the stop: the computed gradient still arrived whole.
                assert received == B * T * D * 4
            else:
                # The waiting client is told to come back (it re-sends the step).
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "stopping" in (err.value.details() or "")
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if mode == "pace":  # the step was computed: the exit checkpoint holds it
        from fedsllm.state import open_store

        snap = open_store("main_server", tmp_path / "state").load()
        assert snap is not None and snap.num_steps == 1 and snap.num_updates == 1
