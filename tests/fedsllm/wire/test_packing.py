"""A step's messages built from its plan (fedsllm.wire.packing) are, byte for
byte and chunk for chunk, the messages the plan-free path makes for the same
frames: on the step that makes the plan and on every later step that reuses it
with other values."""

from __future__ import annotations

import pytest
import torch

from fedsllm.wire import packing
from fedsllm.wire.codec import join_pieces, part_pieces
from fedsllm.wire.messages import (
    StepHeaderInfo,
    StepResultInfo,
    TrainHelloInfo,
    step_header_to_proto,
    step_result_to_proto,
)
from fedsllm.wire.packing import pack_chunks, step_messages
from fedsllm.wire.tensors import TensorFrame, TensorSpec, tensor_to_frame
from fedsllm.wire.train import (
    decode_train_request,
    encode_train_request,
    encode_train_response,
    read_uplink,
    step_download_responses,
    step_upload_requests,
    train_request,
    train_response,
)

from .test_tensors import DTYPES, _special


def _header(step: int, names: tuple[str, ...]) -> StepHeaderInfo:
    return StepHeaderInfo(
        round=0, step=step, mode="train", downlink_bps=0.0, tensor_names=names, sent_unix_s=1.5
    )


def _frames(seed: int, dtype: str, shape: tuple[int, ...]) -> list[TensorFrame]:
    """Three tensors as client.remote sends them (two small, one larger), with
    values that change with `seed`."""
    torch.manual_seed(seed)
    big = _special(DTYPES[dtype], shape) if seed == 0 else torch.randn(shape).to(DTYPES[dtype])
    return [
        tensor_to_frame("attention_mask", torch.randint(0, 2, (2, 3))),
        tensor_to_frame("labels", torch.randint(0, 50, (2, 3))),
        tensor_to_frame("activations", big),
    ]


def _unplanned(
    field: int, head: bytes | None, frames: list[TensorFrame], chunk_bytes: int, end: bool
) -> list[bytes]:
    """The messages without a plan: pack_chunks's groups through part_pieces."""
    groups = list(pack_chunks(frames, chunk_bytes))
    return [
        join_pieces(
            part_pieces(field, head if i == 0 else None, chunks, end and i == len(groups) - 1)
        )
        for i, chunks in enumerate(groups)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 5, 3), (4, 8, 16)])
@pytest.mark.parametrize("chunk_bytes", [1, 3, 5, 64, 100, 10**6])
def test_planned_messages_are_the_unplanned_ones_step_after_step(
    dtype: str, shape: tuple[int, ...], chunk_bytes: int
) -> None:
    names = ("attention_mask", "labels", "activations")
    for step in range(3):  # the first makes the plan, the others reuse it
        frames = _frames(step, dtype, shape)
        header = _header(step, names)
        parts = list(step_upload_requests(header, frames, chunk_bytes))
        head = step_header_to_proto(header).SerializeToString()
        assert [encode_train_request(p) for p in parts] == _unplanned(
            5, head, frames, chunk_bytes, end=True
        )
        assert [p.chunks for p in parts] == list(pack_chunks(frames, chunk_bytes))
        assert [p.end for p in parts] == [False] * (len(parts) - 1) + [True]
        # and, independently of the codec, what protobuf itself writes for them
        assert [encode_train_request(p) for p in parts] == [
            train_request(p).SerializeToString() for p in parts
        ]


@pytest.mark.parametrize("chunk_bytes", [7, 4096])
def test_planned_replies_are_the_unplanned_ones(chunk_bytes: int) -> None:
    for step in range(2):
        grad = tensor_to_frame("activations_grad", torch.randn(2, 8, 64) * step)
        result = StepResultInfo(
            round=0,
            step=step,
            loss=0.25,
            num_tokens=9,
            server_compute_s=0.5,
            tensor_names=("activations_grad",),
        )
        parts = list(step_download_responses(result, [grad], chunk_bytes))
        head = step_result_to_proto(result).SerializeToString()
        assert [encode_train_response(p) for p in parts] == _unplanned(
            4, head, [grad], chunk_bytes, end=False
        )
        assert [encode_train_response(p) for p in parts] == [
            train_response(p).SerializeToString() for p in parts
        ]


def test_a_plan_is_made_once_per_signature_and_the_table_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packing, "_PLANS", {})
    monkeypatch.setattr(packing, "_MAX_PLANS", 3)
    frames = _frames(0, "float32", (4, 8, 16))
    step_messages(frames, 256, end=True)
    (plan,) = packing._PLANS.values()
    step_messages(_frames(1, "float32", (4, 8, 16)), 256, end=True)
    assert list(packing._PLANS.values()) == [plan]  # the same signature: reused
    assert next(iter(packing._PLANS.values())) is plan
    for rows in (1, 2, 3):  # new shapes: new plans, the table cleared when full
        step_messages(_frames(0, "float32", (rows, 8, 16)), 256, end=True)
    assert len(packing._PLANS) == 1


def test_a_planned_step_reads_back_bit_exact() -> None:
    names = ("attention_mask", "labels", "activations")
    specs = [TensorSpec(name, frozenset(DTYPES)) for name in names]
    hello = TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="bfloat16")
    for step in range(2):  # the plan's first step and a reuse
        frames = _frames(step, "bfloat16", (2, 5, 3))
        parts = step_upload_requests(_header(step, names), frames, 8)
        received = [decode_train_request(encode_train_request(p)) for p in parts]
        _, upload = read_uplink([hello, *received], lambda _h: specs)
        assert upload.header == _header(step, names)
        assert {n: bytes(f.data) for n, f in upload.frames.items()} == {
            f.name: bytes(f.data) for f in frames
        }
