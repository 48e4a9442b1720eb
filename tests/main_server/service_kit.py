"""One way to build and serve a MainServerService for tests: the service the
main server, exactly-once, Train identity and fuzz tests used to assemble by
hand, and the server around it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from fedsllm.model.lora import adapter_to_bytes
from fedsllm.trace import Tracer
from main_server.compute import LocalWorker, ServerTrainer, StepQueue
from main_server.service import MainServerService
from main_server.step_checks import StepLimits


def tiny_server_part(seq_len: int = 16) -> tuple[torch.nn.Module, int, int]:
    """The tiny preset's server part, untrained (model.pretrain_steps=0), with
    its hidden size and vocabulary size."""
    from fedsllm.config import load_scenario
    from fedsllm.roles import build_part

    scenario = load_scenario(overrides=["model.pretrain_steps=0", f"data.seq_len={seq_len}"])
    part, tokenizer, cfg = build_part(scenario, "server")
    return part, cfg.hidden_size, tokenizer.vocab_size


def main_service(
    trainer: ServerTrainer,
    *,
    hidden_size: int,
    vocab_size: int,
    max_seq_len: int,
    num_clients: int,
    scenario_hash: str = "h",
    max_batch: int = 8,
    max_tensor_bytes: int = 2**20,
    chunk_bytes: int = 4096,
    tracer: Tracer | None = None,
    **service_kw: Any,
) -> MainServerService:
    """A float32-wire service over `trainer` (untraced unless `tracer`);
    service_kw goes to MainServerService (steps, stop, pace, compute...)."""
    limits = StepLimits(
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        max_batch=max_batch,
        wire_dtype="float32",
        num_clients=num_clients,
        max_tensor_bytes=max_tensor_bytes,
    )
    return MainServerService(
        trainer,
        limits,
        scenario_hash,
        tracer if tracer is not None else Tracer(None, "main_server"),
        chunk_bytes=chunk_bytes,
        adapter_bytes=lambda: trainer.adapter_bytes(adapter_to_bytes),
        **service_kw,
    )


@contextlib.contextmanager
def serving(
    trainer: ServerTrainer, steps: StepQueue | None = None, **service_kw: Any
) -> Iterator[str]:
    """main_service(trainer, **service_kw) on 127.0.0.1, port 0, without
    credentials; yields its address. Its own stop event and step queue (closed
    at the end), so nothing is shared with another test's server."""
    from fedsllm.proto import main_server_pb2_grpc as pb_grpc
    from fedsllm.wire.rpc import create_server, stop_server

    steps = steps or StepQueue(LocalWorker(trainer))
    service_kw.setdefault("stop", threading.Event())
    service = main_service(trainer, steps=steps, **service_kw)
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: pb_grpc.add_MainServerServicer_to_server(service, s)],
        allow_unauthenticated=True,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_server(server, grace_s=0.5)
        steps.close()
