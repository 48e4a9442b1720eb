"""Adapter blobs through PushAdapter / PullGlobal / GetServerAdapter chunk
streams: exact round trips and every rejection."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from fedsllm.errors import WireError
from fedsllm.proto import fed_server_pb2, tensor_pb2
from fedsllm.wire.adapters import (
    AdapterAssembler,
    GlobalHeaderInfo,
    PushHeaderInfo,
    blob_to_chunks,
    pull_responses,
    push_requests,
    read_adapter_chunks,
    read_pull,
    read_push,
)


def _blob() -> bytes:
    gen = torch.Generator().manual_seed(0)
    state = {
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(
            8, 64, generator=gen
        ),
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(
            64, 8, generator=gen
        ).to(torch.bfloat16),
    }
    return save(state)


@pytest.mark.parametrize("chunk_bytes", [1000, 4096, 2**20])
def test_push_round_trip(chunk_bytes: int) -> None:
    blob = _blob()
    header = PushHeaderInfo(client_id=2, round=5, num_samples=321, total_bytes=len(blob))
    msgs = [
        fed_server_pb2.PushAdapterRequest.FromString(r.SerializeToString())
        for r in push_requests(header, blob, chunk_bytes)
    ]
    got_header, got = read_push(msgs)
    assert got_header == header
    assert got == blob
    state = load(got)
    assert state["base_model.model.layers.0.self_attn.q_proj.lora_B.weight"].dtype == (
        torch.bfloat16
    )


def test_pull_round_trip_with_and_without_adapter() -> None:
    blob = _blob()
    header = GlobalHeaderInfo(round=3, has_adapter=True, total_bytes=len(blob), finished=True)
    got_header, got = read_pull(pull_responses(header, blob, 777))
    assert (got_header, got) == (header, blob)
    empty = GlobalHeaderInfo(round=0, has_adapter=False, total_bytes=0)
    msgs = list(pull_responses(empty, None, 777))
    assert len(msgs) == 1
    assert read_pull(msgs) == (empty, None)


def test_server_adapter_chunks_round_trip() -> None:
    blob = _blob()
    assert read_adapter_chunks(blob_to_chunks(blob, 333)) == blob


def test_builders_reject_inconsistent_headers() -> None:
    blob = _blob()
    with pytest.raises(WireError, match="total_bytes"):
        list(
            push_requests(
                PushHeaderInfo(client_id=0, round=0, num_samples=1, total_bytes=len(blob) + 1),
                blob,
                1000,
            )
        )
    with pytest.raises(WireError, match="disagree"):
        list(
            pull_responses(GlobalHeaderInfo(round=0, has_adapter=False, total_bytes=0), blob, 1000)
        )
    with pytest.raises(WireError, match="cannot be empty"):
        list(blob_to_chunks(b"", 10))


def _achunk(total: int, offset: int, data: bytes) -> tensor_pb2.AdapterChunk:
    return tensor_pb2.AdapterChunk(total_bytes=total, offset=offset, data=data)


@pytest.mark.parametrize(
    ("chunks", "field", "needle"),
    [
        ([_achunk(10, 0, b"x" * 5), _achunk(10, 6, b"x" * 4)], "adapter.offset", "=6, expected 5"),
        (
            [_achunk(10, 0, b"x" * 5), _achunk(12, 5, b"x" * 5)],
            "adapter.total_bytes",
            "=12 in a chunk, expected 10",
        ),
        ([_achunk(10, 0, b"x" * 11)], "adapter.data", "runs past total_bytes=10"),
        ([_achunk(10, 0, b"")], "adapter.data", "empty chunk"),
        ([_achunk(10, 0, b"x" * 5)], "adapter.data", "incomplete: 5 of 10"),
        ([_achunk(2**30, 0, b"x")], "adapter.total_bytes", "exceeds the limit 1048576"),
        ([_achunk(0, 0, b"x")], "adapter.total_bytes", "=0, must be > 0"),
        (
            [_achunk(4, 0, b"x" * 4), _achunk(4, 4, b"y")],
            "adapter.offset",
            "chunk after the blob was complete",
        ),
        ([], "adapter.data", "no chunk received"),
    ],
)
def test_adapter_chunks_rejected(chunks: list, field: str, needle: str) -> None:
    with pytest.raises(WireError) as info:
        read_adapter_chunks(chunks, max_bytes=2**20)
    assert info.value.field == field
    assert needle in str(info.value)


def _push_header(total: int, num_samples: int = 1) -> fed_server_pb2.PushAdapterRequest:
    return fed_server_pb2.PushAdapterRequest(
        header=fed_server_pb2.PushAdapterHeader(
            client_id=1, round=0, num_samples=num_samples, total_bytes=total
        )
    )


@pytest.mark.parametrize(
    ("msgs", "field", "needle"),
    [
        ([], "PushAdapterRequest.kind", "empty stream"),
        (
            [fed_server_pb2.PushAdapterRequest(chunk=_achunk(1, 0, b"x"))],
            "PushAdapterRequest.kind",
            "must be header, got chunk",
        ),
        ([_push_header(1, num_samples=0)], "PushAdapterHeader.num_samples", "=0"),
        ([_push_header(2**21)], "PushAdapterHeader.total_bytes", "=2097152, must be in"),
        ([_push_header(4), _push_header(4)], "PushAdapterRequest.kind", "expected chunk"),
        (
            [_push_header(4), fed_server_pb2.PushAdapterRequest(chunk=_achunk(5, 0, b"x"))],
            "adapter.total_bytes",
            "=5 in a chunk, expected 4",
        ),
        (
            [_push_header(4), fed_server_pb2.PushAdapterRequest(chunk=_achunk(4, 0, b"xy"))],
            "adapter.data",
            "incomplete: 2 of 4",
        ),
    ],
)
def test_push_stream_rejected(msgs: list, field: str, needle: str) -> None:
    with pytest.raises(WireError) as info:
        read_push(msgs, max_bytes=2**20)
    assert info.value.field == field
    assert needle in str(info.value)


def test_pull_stream_rejected() -> None:
    hdr = fed_server_pb2.PullGlobalResponse(
        header=fed_server_pb2.PullGlobalHeader(round=1, has_adapter=False, total_bytes=0)
    )
    extra = fed_server_pb2.PullGlobalResponse(chunk=_achunk(1, 0, b"x"))
    with pytest.raises(WireError, match="chunk after a header without adapter"):
        read_pull([hdr, extra])
    with pytest.raises(WireError, match="first message must be header, got chunk"):
        read_pull([extra])
    bad = fed_server_pb2.PullGlobalResponse(
        header=fed_server_pb2.PullGlobalHeader(round=1, has_adapter=False, total_bytes=5)
    )
    with pytest.raises(WireError, match="=5 without an adapter"):
        read_pull([bad])


def test_assembler_with_announced_total() -> None:
    asm = AdapterAssembler(total_bytes=6)
    assert not asm.feed(_achunk(6, 0, b"abc"))
    assert asm.feed(_achunk(6, 3, b"def"))
    assert asm.complete and asm.result() == b"abcdef"
