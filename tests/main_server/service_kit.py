"""One way to build a MainServerService for tests: the service four test files
(main server, exactly-once, Train identity, fuzz) used to assemble by hand."""

from __future__ import annotations

from typing import Any

from fedsllm.model.lora import adapter_to_bytes
from fedsllm.trace import Tracer
from main_server.compute import ServerTrainer
from main_server.service import MainServerService, StepLimits


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
    **service_kw: Any,
) -> MainServerService:
    """A float32-wire service over `trainer` with an untraced Tracer; service_kw
    goes to MainServerService (steps, stop, pace, compute...)."""
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
        Tracer(None, "main_server"),
        chunk_bytes=chunk_bytes,
        adapter_bytes=lambda: trainer.adapter_bytes(adapter_to_bytes),
        **service_kw,
    )
