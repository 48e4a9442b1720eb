"""Train streams through a real MainServer with identity on: a client trains only
as itself (the issue's injected steps as client 1 and 2 were all answered), a
peer holds a bounded number of streams, GetServerAdapter is not for clients."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from fedsllm.config import load_scenario
from fedsllm.model.lora import adapter_to_bytes
from fedsllm.proto import main_server_pb2 as pb
from fedsllm.proto import main_server_pb2_grpc as pb_grpc
from fedsllm.roles import build_part
from fedsllm.security.limits import DEFAULT_MAX_STREAMS
from fedsllm.wire.messages import StepHeaderInfo, TrainHelloInfo
from fedsllm.wire.tensors import tensor_to_frame
from fedsllm.wire.train import step_upload_requests, train_call, train_request
from main_server.compute import ServerTrainer
from tests.fedsllm.security.peers import CLIENT, LAUNCHER, channel_as, code_of, serving
from tests.main_server.service_kit import main_service

HASH = "h"
B, T = 2, 16


@pytest.fixture(scope="module")
def main() -> Iterator[tuple[str, ServerTrainer, int]]:
    scenario = load_scenario(
        overrides=["model.pretrain_steps=0", "data.seq_len=16", "clients.num_clients=3"]
    )
    part, tokenizer, cfg = build_part(scenario, "server")
    trainer = ServerTrainer(part, lr=1e-2)
    service = main_service(
        trainer,
        hidden_size=cfg.hidden_size,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=T,
        num_clients=3,
        scenario_hash=HASH,
    )
    with serving([lambda s: pb_grpc.add_MainServerServicer_to_server(service, s)]) as address:
        yield address, trainer, cfg.hidden_size


def step(client_id: int, hidden: int, value: float = 1.0) -> Iterator[pb.TrainRequest]:
    yield train_request(
        TrainHelloInfo(client_id=client_id, scenario_hash=HASH, wire_dtype="float32")
    )
    tensors = {
        "activations": torch.full((B, T, hidden), value),
        "attention_mask": torch.ones(B, T, dtype=torch.int64),
        "labels": torch.randint(3, 200, (B, T), generator=torch.Generator().manual_seed(0)),
    }
    frames = [tensor_to_frame(n, t) for n, t in tensors.items()]
    header = StepHeaderInfo(
        round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=tuple(tensors)
    )
    yield from step_upload_requests(header, frames, 4096)


def train(address: str, who, client_id: int, hidden: int) -> grpc.StatusCode | None:
    channel = channel_as(address, who)
    return code_of(lambda: list(train_call(channel)(step(client_id, hidden), timeout=20)))


def test_train_streams_as_another_client_are_refused_and_inject_nothing(main) -> None:
    address, trainer, hidden = main
    updates = trainer.num_updates
    before = trainer.adapter_bytes(adapter_to_bytes)
    for as_id in (1, 2, 1):  # the issue: twice as client 1, once as client 2
        assert train(address, CLIENT[0], as_id, hidden) == grpc.StatusCode.PERMISSION_DENIED
    assert train(address, None, 1, hidden) == grpc.StatusCode.UNAUTHENTICATED
    assert trainer.num_updates == updates
    assert trainer.adapter_bytes(adapter_to_bytes) == before
    # As itself, client 0 trains.
    assert train(address, CLIENT[0], 0, hidden) is None
    assert trainer.num_updates == updates + 1


def test_a_peer_holds_at_most_a_few_train_streams(main) -> None:
    address, _trainer, _hidden = main
    stub = channel_as(address, CLIENT[1])
    hello = TrainHelloInfo(client_id=1, scenario_hash=HASH, wire_dtype="float32")

    class Held:
        """A stream that sent its hello and then waits (requests never end)."""

        def __init__(self) -> None:
            import threading

            self.release = threading.Event()

        def __iter__(self):
            yield train_request(hello)
            self.release.wait(20)

    held = [Held() for _ in range(DEFAULT_MAX_STREAMS)]
    calls = [train_call(stub)(iter(h), timeout=20) for h in held]
    for call in calls:
        next(call)  # the welcome: the stream is open and counted
    extra = Held()
    try:
        assert code_of(lambda: list(train_call(stub)(iter(extra), timeout=20))) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    finally:
        for h in (*held, extra):
            h.release.set()
        for call in calls:
            call.cancel()


def test_get_server_adapter_is_not_for_clients(main) -> None:
    address, _trainer, _hidden = main
    request = pb.GetServerAdapterRequest()
    client = pb_grpc.MainServerStub(channel_as(address, CLIENT[0]))
    assert code_of(lambda: client.GetServerAdapter(request, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    launcher = pb_grpc.MainServerStub(channel_as(address, LAUNCHER))
    assert code_of(lambda: launcher.GetServerAdapter(request, timeout=5)) is None
