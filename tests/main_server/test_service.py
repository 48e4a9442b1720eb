"""MainServer through a real gRPC server on port 0 with a tiny model: a good step
trains, every kind of malformed step is refused with INVALID_ARGUMENT (or
FAILED_PRECONDITION) and leaves the server adapter untouched."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import torch

from client.remote import MainServerStream
from fedsllm.model.lora import adapter_to_bytes
from fedsllm.proto import main_server_pb2 as pb
from fedsllm.proto import main_server_pb2_grpc as pb_grpc
from fedsllm.trace import Tracer
from fedsllm.wire.messages import TRAIN_WIRE_VERSION, StepHeaderInfo, TrainHelloInfo
from fedsllm.wire.tensors import Chunk, TensorFrame, frame_to_chunks, tensor_to_frame
from fedsllm.wire.train import StepPart, step_upload_requests, train_call, train_request
from main_server.compute import ServerTrainer
from tests.main_server.service_kit import serving, tiny_server_part

HASH = "h"
B, T, D = 2, 16, 64


def _tiny_serving(
    num_clients: int = 1, **service_kw: Any
) -> tuple[ServerTrainer, contextlib.AbstractContextManager[str]]:
    """A fresh trainer over the tiny server part, and `serving` it for this
    file's T tokens (enter the second to get the address)."""
    part, hidden, vocab = tiny_server_part()
    trainer = ServerTrainer(part, lr=1e-2)
    served = serving(
        trainer,
        hidden_size=hidden,
        vocab_size=vocab,
        max_seq_len=T,
        num_clients=num_clients,
        **service_kw,
    )
    return trainer, served


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ServerTrainer]]:
    trainer, served = _tiny_serving(num_clients=2)
    with served as address:
        yield address, trainer


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "activations": torch.randn(B, T, D, generator=g),
        "attention_mask": torch.ones(B, T, dtype=torch.int64),
        "labels": torch.randint(3, 259, (B, T), generator=g),
    }


def test_good_step_trains_and_returns_gradient(server) -> None:
    address, trainer = server
    before = trainer.adapter_bytes(adapter_to_bytes)
    updates = trainer.num_updates
    stream = MainServerStream(address, 0, HASH, "float32", chunk_bytes=4096)
    t = _tensors()
    sent = stream.send_step(0, 0, True, t["activations"], t["attention_mask"], t["labels"])
    reply, received = stream.receive_reply(0, 0)
    stream.close()
    assert sent > B * T * D * 4
    assert received == B * T * D * 4
    assert reply.grad is not None and reply.grad.shape == (B, T, D)
    assert torch.isfinite(reply.grad).all() and reply.grad.abs().sum() > 0
    assert 0 < reply.loss < 20 and reply.num_tokens == B * (T - 1)
    assert trainer.num_updates == updates + 1
    assert trainer.adapter_bytes(adapter_to_bytes) != before


def _frames(t: dict[str, torch.Tensor]) -> list[TensorFrame]:
    return [tensor_to_frame(name, t[name]) for name in ("activations", "attention_mask", "labels")]


def _stream(
    frames: list[TensorFrame],
    client_id: int = 0,
    scenario_hash: str = HASH,
    names: tuple[str, ...] | None = None,
    wire_version: int = TRAIN_WIRE_VERSION,
) -> Iterator[pb.TrainRequest]:
    yield train_request(
        TrainHelloInfo(
            client_id=client_id,
            scenario_hash=scenario_hash,
            wire_dtype="float32",
            wire_version=wire_version,
        )
    )
    header = StepHeaderInfo(
        round=0,
        step=0,
        mode="train",
        downlink_bps=0.0,
        tensor_names=names or tuple(f.name for f in frames),
    )
    if names is None:
        yield from step_upload_requests(header, frames, 4096)
    else:  # the version-1 layout of a step, which a version-2 reader also accepts
        yield train_request(header)
        for frame in frames:
            for chunk in frame_to_chunks(frame, 4096):
                yield train_request(chunk)


def _with(**changes: torch.Tensor) -> list[TensorFrame]:
    t = _tensors()
    t.update(changes)
    return _frames(t)


def _nan_acts() -> torch.Tensor:
    a = _tensors()["activations"]
    a[0, 3, 5] = float("nan")
    return a


def _bad_labels() -> torch.Tensor:
    labels = _tensors()["labels"]
    labels[1, 2] = 100000
    return labels


def _bad_mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[0, 0] = 7
    return mask


def _mismatched_bytes() -> list[TensorFrame]:
    frames = _frames(_tensors())
    act = frames[0]
    return [TensorFrame(act.name, act.dtype, (B, T, D + 1), act.data), *frames[1:]]


def _float64_stream() -> Iterator[pb.TrainRequest]:
    """A dtype the client-side encoder would refuse, so the chunk is built by hand."""
    from fedsllm.proto import tensor_pb2

    acts = torch.randn(B, T, D, dtype=torch.float64).numpy().tobytes()
    yield train_request(TrainHelloInfo(client_id=0, scenario_hash=HASH, wire_dtype="float32"))
    yield train_request(
        StepHeaderInfo(
            round=0,
            step=0,
            mode="train",
            downlink_bps=0.0,
            tensor_names=("activations", "attention_mask", "labels"),
        )
    )
    yield train_request(
        tensor_pb2.TensorChunk(
            name="activations",
            dtype="float64",
            shape=[B, T, D],
            total_bytes=len(acts),
            offset=0,
            data=acts,
        )
    )


def _header(step: int) -> StepHeaderInfo:
    return StepHeaderInfo(
        round=0, step=step, mode="train", downlink_bps=0.0, tensor_names=STEP_NAMES
    )


STEP_NAMES = ("activations", "attention_mask", "labels")


def _parts_stream(parts: list[object]) -> Iterator[object]:
    """Hello, then hand-made StepPart messages (wire version 2)."""
    yield TrainHelloInfo(client_id=0, scenario_hash=HASH, wire_dtype="float32")
    yield from parts


def _no_header() -> Iterator[object]:
    parts = list(step_upload_requests(_header(0), _frames(_tensors()), 4096))
    return _parts_stream([StepPart(parts[0].chunks, None, False), *parts[1:]])


def _no_end() -> Iterator[object]:
    frames = _frames(_tensors())
    first = list(step_upload_requests(_header(0), frames, 4096))
    first[-1] = StepPart(first[-1].chunks, first[-1].header, False)
    return _parts_stream([*first, *step_upload_requests(_header(1), frames, 4096)])


def _out_of_order() -> Iterator[object]:
    acts, mask, labels = _frames(_tensors())
    c0, c1 = frame_to_chunks(acts, 4096)
    (m,), (lab,) = frame_to_chunks(mask, 4096), frame_to_chunks(labels, 4096)
    return _parts_stream([StepPart((c1,), _header(0)), StepPart((c0, m, lab), None, True)])


def _size_mismatch(end_early: bool) -> Iterator[object]:
    """The second activation chunk 4 bytes short: then the mask (or the end)."""
    acts, mask, labels = _frames(_tensors())
    c0, c1 = frame_to_chunks(acts, 4096)
    short = Chunk(c1.name, c1.dtype, c1.shape, c1.total_bytes, c1.offset, bytes(c1.data)[:-4])
    if end_early:
        return _parts_stream([StepPart((c0,), _header(0)), StepPart((short,), None, True)])
    parts = [StepPart((c0,), _header(0)), StepPart((short, *frame_to_chunks(mask, 4096)))]
    return _parts_stream([*parts, StepPart(tuple(frame_to_chunks(labels, 4096)), None, True)])


CASES: list[tuple[str, Callable[[], Iterator[pb.TrainRequest]], grpc.StatusCode, str]] = [
    (
        "v2: header missing on the first message",
        _no_header,
        grpc.StatusCode.INVALID_ARGUMENT,
        "StepPart.header",
    ),
    (
        "v2: end flag missing before the next header",
        _no_end,
        grpc.StatusCode.INVALID_ARGUMENT,
        "StepPart.end: header of step 1 before the end of step 0",
    ),
    (
        "v2: chunks out of order",
        _out_of_order,
        grpc.StatusCode.INVALID_ARGUMENT,
        "activations.offset",
    ),
    (
        "v2: a tensor short of its size, then the next",
        lambda: _size_mismatch(end_early=False),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'attention_mask' started before 'activations' was complete (8188 of 8192 bytes)",
    ),
    (
        "v2: a tensor short of its size at the end flag",
        lambda: _size_mismatch(end_early=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "activations.data: incomplete: 8188 of 8192 bytes received",
    ),
    (
        "wrong hidden size",
        lambda: _stream(_with(activations=torch.randn(B, T, D - 1))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "activations.shape[2]",
    ),
    (
        "batch mismatch",
        lambda: _stream(_with(labels=torch.randint(3, 200, (B + 1, T)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "labels.shape[0]",
    ),
    ("dtype not allowed", _float64_stream, grpc.StatusCode.INVALID_ARGUMENT, "float64"),
    (
        "float16 but float32 expected",
        lambda: _stream(_with(activations=torch.randn(B, T, D).half())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "activations.dtype",
    ),
    (
        "NaN in activations",
        lambda: _stream(_with(activations=_nan_acts())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non-finite",
    ),
    (
        "label out of vocabulary",
        lambda: _stream(_with(labels=_bad_labels())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "labels",
    ),
    (
        "mask not 0/1",
        lambda: _stream(_with(attention_mask=_bad_mask())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "attention_mask",
    ),
    (
        "sequence too long",
        lambda: _stream(
            _frames(
                {
                    "activations": torch.randn(B, T * 2, D),
                    "attention_mask": torch.ones(B, T * 2, dtype=torch.int64),
                    "labels": torch.randint(3, 200, (B, T * 2)),
                }
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "attention_mask.shape[1]",  # the step's T, refused once the mask is in
    ),
    (
        "shape disagrees with byte length",
        lambda: _stream(_mismatched_bytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "activations",
    ),
    (
        "missing labels",
        lambda: _stream(_frames(_tensors())[:2]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor_names",
    ),
    (
        "stream ends inside a step",
        lambda: _stream(_frames(_tensors()), names=("activations", "attention_mask", "labels")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ended inside",
    ),
    (
        "unknown client",
        lambda: _stream(_frames(_tensors()), client_id=7),
        grpc.StatusCode.INVALID_ARGUMENT,
        "client_id",
    ),
    (
        "version-1 peer",
        lambda: _stream(_frames(_tensors()), wire_version=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TrainHello.wire_version: =1, this side speaks 2 only",
    ),
    (
        "peer from before versioning",
        lambda: _stream(_frames(_tensors()), wire_version=0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TrainHello.wire_version: =1, this side speaks 2 only",
    ),
    (
        "newer wire version",
        lambda: _stream(_frames(_tensors()), wire_version=3),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TrainHello.wire_version: =3, this side speaks 2 only",
    ),
    (
        "other scenario",
        lambda: _stream(_frames(_tensors()), scenario_hash="x"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "scenario_hash",
    ),
]


def _as_proto(item: object) -> pb.TrainRequest:
    return item if isinstance(item, pb.TrainRequest) else train_request(item)  # type: ignore[arg-type]


def _train(channel: grpc.Channel, client: str, requests: Iterator[object]) -> Iterator[object]:
    """A Train call with the chunk codec, or with the generated stub's protobuf
    (de)serializers: the server must answer both alike."""
    if client == "codec":
        return train_call(channel)(requests, timeout=10)
    return pb_grpc.MainServerStub(channel).Train(map(_as_proto, requests), timeout=10)


@pytest.mark.parametrize("client", ["codec", "protobuf"])
@pytest.mark.parametrize(("name", "requests", "code", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_step_refused_state_unchanged(server, name, requests, code, match, client) -> None:
    address, trainer = server
    from fedsllm.wire.rpc import make_channel

    before = trainer.adapter_bytes(adapter_to_bytes)
    updates = trainer.num_updates
    with make_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        for _ in _train(channel, client, requests()):
            pass
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()
    assert trainer.num_updates == updates
    assert trainer.adapter_bytes(adapter_to_bytes) == before


def test_initial_adapter_eval_ignores_training_so_far(server) -> None:
    """The "before training" loss is the same whether or not other clients have
    already updated the shared server adapter."""
    address, trainer = server
    t = _tensors(seed=7)
    stream = MainServerStream(address, 1, HASH, "float32", chunk_bytes=4096)

    def evaluate(initial: bool) -> float:
        stream.send_step(
            0,
            0,
            False,
            t["activations"],
            t["attention_mask"],
            t["labels"],
            initial_adapter=initial,
        )
        reply, _ = stream.receive_reply(0, 0)
        assert reply.grad is None
        return reply.loss

    before_initial, before_current = evaluate(True), evaluate(False)
    adapter = trainer.adapter_bytes(adapter_to_bytes)
    stream.send_step(0, 1, True, t["activations"], t["attention_mask"], t["labels"])
    stream.receive_reply(0, 1)
    after_initial, after_current = evaluate(True), evaluate(False)
    stream.close()
    assert after_initial == before_initial
    assert after_current != before_current  # the adapter did train
    assert trainer.adapter_bytes(adapter_to_bytes) != adapter  # and the swap was undone


def test_upload_time_is_measured_before_the_server_computes(tmp_path) -> None:
    """receive_s (what 'achieved uplink rate' divides by) ends when the upload has
    arrived: a long emulated server step must not count as transfer time."""
    import time

    from fedsllm.trace import read_records

    @contextlib.contextmanager
    def slow_device(_flops: float, _label: str):
        yield None
        time.sleep(1.0)  # the emulated server takes 1 s for this step

    tracer = Tracer(tmp_path / "trace" / "main_server.jsonl", "main_server")
    _, served = _tiny_serving(tracer=tracer, compute=slow_device)
    try:
        with served as address:
            stream = MainServerStream(address, 0, HASH, "float32", chunk_bytes=4096, now=tracer.now)
            t = _tensors()
            stream.send_step(0, 0, True, t["activations"], t["attention_mask"], t["labels"])
            stream.receive_reply(0, 0)
            stream.close()
    finally:
        tracer.close()
    (step,) = [r for r in read_records(tmp_path / "trace") if r["name"] == "server_compute"]
    assert step["t1"] - step["t0"] >= 1.0
    # A receive time that took the compute in would be at least its 1 s.
    assert 0 <= step["extra"]["receive_s"] < 1.0


@pytest.mark.parametrize("downlink_bps", [0.0, 1e9])
def test_reply_layout_and_pacing_charge_every_message(downlink_bps: float) -> None:
    """Unpaced (0 bit/s), the result rides in the gradient's first message (wire
    version 2); on a paced downlink it goes first and alone, not charged, as
    version 1 paced. Either way pace() sees each gradient message's wire size
    before it is sent, the first flagged new."""
    from fedsllm.wire.rpc import make_channel
    from fedsllm.wire.train import ReceivedPart, ReceivedResult, encode_train_response

    charged: list[tuple[int, float, int, bool]] = []
    header = StepHeaderInfo(
        round=0, step=0, mode="train", downlink_bps=downlink_bps, tensor_names=STEP_NAMES
    )
    requests = [
        TrainHelloInfo(client_id=0, scenario_hash=HASH, wire_dtype="float32"),
        *step_upload_requests(header, _frames(_tensors()), 4096),
    ]
    _, served = _tiny_serving(pace=lambda *args: charged.append(args))
    with served as address, make_channel(address) as channel:
        replies = list(train_call(channel)(iter(requests), timeout=30))[1:]
    if downlink_bps == 0:
        assert [type(r) for r in replies] == [ReceivedPart, ReceivedPart]
        assert replies[0].head is not None and replies[1].head is None
        charged_msgs = replies
    else:
        assert type(replies[0]) is ReceivedResult  # TrainResponse.result, alone
        assert [type(r).__name__ for r in replies[1:]] == ["Chunk", "Chunk"]
        charged_msgs = replies[1:]
    assert charged == [
        (0, downlink_bps, len(encode_train_response(r)), i == 0) for i, r in enumerate(charged_msgs)
    ]


def test_train_step_hashed_beside_the_worker_not_before_it(monkeypatch) -> None:
    """The step digest (exactly-once) is computed on the service's digest thread
    while the worker computes the step, not on the handler before the step is
    queued, where hashing 1.57 MB cost 1.3-2 ms of every round trip; the
    applied step keeps the very digest step_digest gives."""
    import threading

    from main_server import service as service_module
    from main_server.compute import digest_value

    threads: list[str] = []
    digests: list[str] = []
    step_digest = service_module.step_digest

    def recording_digest(upload) -> str:
        threads.append(threading.current_thread().name)
        digests.append(step_digest(upload))
        return digests[-1]

    monkeypatch.setattr(service_module, "step_digest", recording_digest)
    trainer, served = _tiny_serving()
    with served as address:
        stream = MainServerStream(address, 0, HASH, "float32", chunk_bytes=4096)
        t = _tensors(3)
        stream.send_step(0, 0, True, t["activations"], t["attention_mask"], t["labels"])
        stream.receive_reply(0, 0)
        stream.send_step(0, 0, False, t["activations"], t["attention_mask"], t["labels"])
        stream.receive_reply(0, 0)
        stream.close()
    assert len(threads) == 1, "one train step hashed, the evaluation not"
    assert threads[0].startswith("step-digest")
    # The digest of the tensors sent, built here from them: the thread hashed
    # the step's own bytes (not a receive buffer the next step had reused).
    from fedsllm.wire.train import StepUpload

    frames = _frames(t)
    header = StepHeaderInfo(
        round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=tuple(f.name for f in frames)
    )
    sent = StepUpload(header=header, frames={f.name: f for f in frames}, receive_s=0.0)
    assert digests[0] == step_digest(sent)
    assert digest_value(trainer.applied[0].digest) == step_digest(sent)
