"""Tensor frames and chunk streams: round trips, byte order, every rejection."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
import torch

from fedsllm.errors import WireError
from fedsllm.proto import tensor_pb2
from fedsllm.wire.tensors import (
    DTYPE_ITEMSIZE,
    Chunk,
    ChunkAssembler,
    ReceiveBuffers,
    TensorFrame,
    TensorSpec,
    WireLimits,
    assemble,
    check_finite,
    chunk_from_proto,
    chunk_to_proto,
    frame_to_chunks,
    frame_to_tensor,
    tensor_to_frame,
)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
    "uint8": torch.uint8,
}
SHAPES = [(), (1,), (7,), (2, 3), (2, 5, 3), (1, 1, 1, 4)]


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{shape}".encode()))
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    return torch.randint(0, 200, shape, generator=gen).to(dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
def test_frame_round_trip_every_dtype_and_shape(name: str, shape: tuple[int, ...]) -> None:
    x = _sample(DTYPES[name], shape)
    frame = tensor_to_frame("t", x)
    assert frame.dtype == name
    assert frame.shape == shape
    assert frame.num_bytes == math.prod(shape) * DTYPE_ITEMSIZE[name]
    y = frame_to_tensor(frame)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, x)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("chunk_bytes", [1, 3, 64, 4096, 10**7])
def test_chunk_round_trip(name: str, chunk_bytes: int) -> None:
    x = _sample(DTYPES[name], (3, 11, 5))
    frame = tensor_to_frame("activations", x)
    chunks = list(frame_to_chunks(frame, chunk_bytes))
    assert len(chunks) == math.ceil(frame.num_bytes / chunk_bytes)
    assert [c.offset for c in chunks] == list(range(0, frame.num_bytes, chunk_bytes))
    out = assemble(chunks)
    assert torch.equal(frame_to_tensor(out["activations"]), x)


def test_byte_order_is_little_endian() -> None:
    frame = tensor_to_frame("x", torch.tensor([1.5, -2.0], dtype=torch.float32))
    assert bytes(frame.data) == struct.pack("<2f", 1.5, -2.0)
    frame = tensor_to_frame("x", torch.tensor([258], dtype=torch.int64))
    assert bytes(frame.data) == struct.pack("<q", 258)
    # bfloat16 is the top half of the float32 pattern: 1.0 -> 0x3f80, little-endian.
    frame = tensor_to_frame("x", torch.tensor([1.0], dtype=torch.bfloat16))
    assert bytes(frame.data) == b"\x80\x3f"
    decoded = frame_to_tensor(TensorFrame("y", "int32", (2,), struct.pack("<2i", 7, -3)))
    assert decoded.tolist() == [7, -3]


def test_wire_cast_and_decode_cast() -> None:
    x = torch.randn(4, 8)
    frame = tensor_to_frame("a", x, wire_dtype="bfloat16")
    assert frame.dtype == "bfloat16" and frame.num_bytes == 4 * 8 * 2
    y = frame_to_tensor(frame, dtype=torch.float32)
    assert y.dtype == torch.float32
    assert torch.allclose(y, x, rtol=1e-2, atol=1e-2)
    assert torch.equal(y, x.to(torch.bfloat16).float())


def test_decoded_tensor_is_writable_copy() -> None:
    x = torch.arange(6, dtype=torch.float32)
    frame = tensor_to_frame("a", x)
    y = frame_to_tensor(frame)
    y += 1
    assert torch.equal(x, torch.arange(6, dtype=torch.float32))
    assert torch.equal(frame_to_tensor(frame), x)


def test_non_contiguous_and_grad_tensors_encode() -> None:
    x = torch.randn(4, 6, requires_grad=True)
    t = x.t()
    frame = tensor_to_frame("a", t)
    assert frame.shape == (6, 4)
    assert torch.equal(frame_to_tensor(frame), t.detach())


@pytest.mark.parametrize(
    ("tensor", "wire_dtype", "field"),
    [
        (torch.zeros(0, 3), None, "a.shape"),
        (torch.zeros(2, dtype=torch.float64), None, "a.dtype"),
        (torch.zeros(2, dtype=torch.complex64), None, "a.dtype"),
        (torch.zeros(2), "float64", "a.dtype"),
    ],
)
def test_sender_rejects(tensor: torch.Tensor, wire_dtype: str | None, field: str) -> None:
    with pytest.raises(WireError) as info:
        tensor_to_frame("a", tensor, wire_dtype=wire_dtype)
    assert info.value.field == field


def _chunk(**kw: object) -> tensor_pb2.TensorChunk:
    base: dict[str, object] = dict(
        name="activations",
        dtype="float32",
        shape=[2, 4, 8],
        total_bytes=256,
        offset=0,
        data=b"\0" * 256,
    )
    base.update(kw)
    return tensor_pb2.TensorChunk(**base)


SPECS = [
    TensorSpec("activations", frozenset({"float32", "bfloat16"}), ("B", "T", 8), True),
    TensorSpec("attention_mask", frozenset({"int64"}), ("B", "T")),
    TensorSpec("labels", frozenset({"int64"}), None),
]


@pytest.mark.parametrize(
    ("chunks", "field", "needle"),
    [
        ([_chunk(name="weights")], "chunk.name", "'weights'"),
        ([_chunk(name="")], "chunk.name", "unexpected tensor"),
        ([_chunk(dtype="float64")], "activations.dtype", "'float64' is not allowed"),
        (
            [_chunk(dtype="int64", total_bytes=512, data=b"\0" * 512)],
            "activations.dtype",
            "=int64, expected one of",
        ),
        (
            [_chunk(shape=[2, 4, 7], total_bytes=224, data=b"\0" * 224)],
            "activations.shape[2]",
            "=7, expected 8",
        ),
        ([_chunk(shape=[2, 0, 8], total_bytes=0)], "activations.shape[1]", "=0"),
        ([_chunk(shape=[2, 32], total_bytes=256)], "activations.shape", "rank 2, expected rank 3"),
        ([_chunk(total_bytes=255)], "activations.total_bytes", "=255, but shape (2, 4, 8)"),
        ([_chunk(offset=4)], "activations.offset", "=4, expected 0"),
        ([_chunk(data=b"")], "activations.data", "empty chunk"),
        ([_chunk(data=b"\0" * 300)], "activations.data", "runs past total_bytes=256"),
        (
            [_chunk(data=b"\0" * 128), _chunk(offset=64, data=b"\0" * 128)],
            "activations.offset",
            "=64, expected 128",
        ),
        # A later chunk (laid out, it continues the tensor without a record):
        # empty, or running past the total.
        (
            [_chunk(data=b"\0" * 128), _chunk(offset=128, data=b"")],
            "activations.data",
            "empty chunk at offset 128",
        ),
        (
            [_chunk(data=b"\0" * 128), _chunk(offset=128, data=b"\0" * 132)],
            "activations.data",
            "chunk [128, 260) runs past total_bytes=256",
        ),
        (
            [
                _chunk(data=b"\0" * 128),
                _chunk(name="labels", dtype="int64", shape=[2, 4], total_bytes=64, data=b"\0" * 64),
            ],
            "chunk.name",
            "'labels' started before 'activations' was complete (128 of 256",
        ),
        (
            [_chunk(data=b"\0" * 128), _chunk(offset=128, dtype="bfloat16", data=b"\0" * 128)],
            "activations.dtype",
            "in a later chunk",
        ),
        (
            [_chunk(data=b"\0" * 128), _chunk(offset=128, shape=[4, 2, 8], data=b"\0" * 128)],
            "activations.shape",
            "in a later chunk",
        ),
        (
            [_chunk(data=b"\0" * 128), _chunk(offset=128, total_bytes=512, data=b"\0" * 128)],
            "activations.total_bytes",
            "in a later chunk",
        ),
        ([_chunk(), _chunk()], "activations", "sent twice"),
        (
            [
                _chunk(),
                _chunk(
                    name="attention_mask",
                    dtype="int64",
                    shape=[2, 5],
                    total_bytes=80,
                    data=b"\0" * 80,
                ),
            ],
            "attention_mask.shape[1]",
            "=5, expected T=4 (from activations.shape[1])",
        ),
        (
            [_chunk(data=struct.pack("<f", float("nan")) + b"\0" * 252)],
            "activations.data",
            "1 non-finite value(s), first at flat index 0",
        ),
        (
            [_chunk(data=b"\0" * 252 + struct.pack("<f", float("inf")))],
            "activations.data",
            "index 63 (inf)",
        ),
    ],
)
@pytest.mark.parametrize("how", ["feed", "feed_laid"])
def test_assembler_rejects(
    chunks: list[tensor_pb2.TensorChunk], field: str, needle: str, how: str
) -> None:
    """Chunk by chunk (`feed`) or laid out in one received message, as the
    codec hands a part to the readers (`feed_laid`): the same refusals."""
    asm = ChunkAssembler.for_specs(SPECS)
    with pytest.raises(WireError) as info:
        if how == "feed":
            for c in chunks:
                asm.feed(c)
        else:
            asm.feed_laid(*_laid(chunks))
    assert info.value.field == field
    assert needle in str(info.value)


def _laid(chunks: list[tensor_pb2.TensorChunk]) -> tuple[list, bytes, int]:
    """`chunks` as one message laid out by fedsllm.wire.codec: (laid chunks,
    message bytes, where the layout starts), the data after 3 other bytes."""
    buf = bytearray(b"abc")
    laid = []
    for c in chunks:
        key = (c.name, c.dtype, tuple(c.shape), c.total_bytes)
        laid.append((key, c.offset, len(buf) - 3, len(buf) - 3 + len(c.data)))
        buf += c.data
    return laid, bytes(buf), 3


def test_laid_chunks_assemble_as_fed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor in several laid-out messages is the tensor fed chunk by chunk;
    only its first chunk goes through `feed` (the rest continue it directly)."""
    t = torch.randn(2, 4, 8)
    frame = tensor_to_frame("activations", t)
    chunks = [chunk_to_proto(c) for c in frame_to_chunks(frame, 100)]
    fed, laid = ChunkAssembler.for_specs(SPECS), ChunkAssembler.for_specs(SPECS)
    for c in chunks:
        fed.feed(c)
    calls = []
    feed = ChunkAssembler.feed
    monkeypatch.setattr(ChunkAssembler, "feed", lambda self, c: calls.append(c) or feed(self, c))
    for i in range(0, len(chunks), 2):
        laid.feed_laid(*_laid(chunks[i : i + 2]))
    assert len(chunks) == 3 and len(calls) == 1
    assert laid.in_progress is None
    got = frame_to_tensor(laid.finish(["activations"])["activations"])
    assert torch.equal(got, t)
    assert torch.equal(got, frame_to_tensor(fed.finish()["activations"]))


def test_assembler_size_limit_checked_before_allocation() -> None:
    huge = _chunk(shape=[2**20, 2**20, 8], total_bytes=2**20 * 2**20 * 32, data=b"\0")
    asm = ChunkAssembler.for_specs(SPECS, WireLimits(max_tensor_bytes=2**20))
    with pytest.raises(WireError, match="exceeds the limit 1048576") as info:
        asm.feed(huge)
    assert info.value.field == "activations.total_bytes"
    rank = _chunk(shape=[1] * 9, total_bytes=4, data=b"\0" * 4)
    with pytest.raises(WireError, match="rank 9 exceeds"):
        ChunkAssembler(limits=WireLimits()).feed(rank)


def test_assembler_finish_reports_incomplete_and_missing() -> None:
    asm = ChunkAssembler.for_specs(SPECS)
    asm.feed(_chunk(data=b"\0" * 100))
    assert asm.in_progress == "activations"
    with pytest.raises(WireError, match="incomplete: 100 of 256"):
        asm.finish()
    asm = ChunkAssembler.for_specs(SPECS)
    asm.feed(_chunk())
    with pytest.raises(WireError, match=r"\['labels'\] never arrived") as info:
        asm.finish(["activations", "labels"])
    assert info.value.field == "labels"


def test_assembler_several_tensors_with_symbols() -> None:
    acts = torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.int64)
    labels = torch.arange(8, dtype=torch.int64).reshape(2, 4)
    frames = [
        tensor_to_frame("activations", acts),
        tensor_to_frame("attention_mask", mask),
        tensor_to_frame("labels", labels),
    ]
    asm = ChunkAssembler.for_specs(SPECS)
    done = [asm.feed(c) for f in frames for c in frame_to_chunks(f, 48)]
    assert [d.name for d in done if d is not None] == ["activations", "attention_mask", "labels"]
    out = asm.finish(["activations", "attention_mask", "labels"])
    assert torch.equal(frame_to_tensor(out["activations"]), acts)
    assert torch.equal(frame_to_tensor(out["labels"]), labels)
    assert asm.bindings["B"][0] == 2 and asm.bindings["T"][0] == 4


def test_rejected_header_binds_nothing() -> None:
    asm = ChunkAssembler.for_specs(SPECS)
    with pytest.raises(WireError):
        asm.feed(_chunk(shape=[2, 4, 7], total_bytes=224, data=b"\0" * 224))
    assert asm.bindings == {} and asm.in_progress is None and asm.frames == {}


def test_check_finite_ignores_integers_and_flags_bf16() -> None:
    check_finite(tensor_to_frame("m", torch.tensor([1, 2], dtype=torch.int64)))
    bad = tensor_to_frame("g", torch.tensor([0.0, float("-inf")], dtype=torch.bfloat16))
    with pytest.raises(WireError, match="first at flat index 1"):
        check_finite(bad)


def test_frame_to_chunks_rejects_bad_chunk_size() -> None:
    with pytest.raises(WireError, match="chunk_bytes"):
        list(frame_to_chunks(tensor_to_frame("a", torch.ones(2)), 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_finite_accepts_values_whose_sum_overflows(dtype: torch.dtype) -> None:
    big = torch.full((64,), torch.finfo(dtype).max / 2, dtype=dtype)
    check_finite(tensor_to_frame("g", big))
    big[17] = float("nan")
    with pytest.raises(WireError, match="1 non-finite value"):
        check_finite(tensor_to_frame("g", big))


def test_check_finite_catches_opposite_infinities() -> None:
    with pytest.raises(WireError, match="2 non-finite value"):
        check_finite(tensor_to_frame("g", torch.tensor([float("inf"), 1.0, float("-inf")])))


# ---------------------------------------------------------------- through the wire bytes


def _special(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Samples with the bit patterns a lossy path would change: NaN payloads,
    signed zeros, infinities, subnormals (floats), extremes (integers)."""
    x = _sample(dtype, shape).reshape(-1).clone()
    if dtype.is_floating_point and x.numel() >= 6:
        bits = x.view(torch.int16 if dtype != torch.float32 else torch.int32)
        info = torch.finfo(dtype)
        x[1] = -0.0
        x[2] = float("inf")
        x[3] = info.smallest_normal / 4  # subnormal
        x[4] = float("nan")
        bits[5] = bits[4] | 1  # a NaN with another payload
    elif dtype in (torch.int64, torch.int32) and x.numel() >= 2:
        x[0], x[1] = torch.iinfo(dtype).min, torch.iinfo(dtype).max
    return x.reshape(shape)


def _through_wire(chunks: list[Chunk], envelope: str) -> list[Chunk]:
    from fedsllm.wire.train import (
        decode_train_request,
        decode_train_response,
        encode_train_request,
        encode_train_response,
    )

    if envelope == "request":
        return [decode_train_request(encode_train_request(c)) for c in chunks]
    return [decode_train_response(encode_train_response(c)) for c in chunks]


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 4093])
def test_bit_exact_through_wire_bytes(name: str, shape: tuple[int, ...], chunk_bytes: int) -> None:
    x = _special(DTYPES[name], shape)
    frame = tensor_to_frame("t", x)
    envelope = "request" if chunk_bytes % 2 else "response"
    received = _through_wire(list(frame_to_chunks(frame, chunk_bytes)), envelope)
    out = assemble(received)["t"]
    assert (out.dtype, out.shape) == (name, shape)
    assert bytes(out.data) == bytes(frame.data)  # bit for bit, NaN payloads included
    y = frame_to_tensor(out)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert bytes(y.reshape(-1).view(torch.uint8).numpy()) == bytes(frame.data)


def test_chunks_are_views_of_the_frame() -> None:
    """frame_to_chunks copies nothing: a chunk sees a change to the tensor."""
    x = torch.zeros(16)
    chunks = list(frame_to_chunks(tensor_to_frame("a", x), 16))
    x[5] = 1.0
    assert bytes(chunks[1].data) == struct.pack("<4f", 0.0, 1.0, 0.0, 0.0)  # elements 4-7


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    from fedsllm.wire.codec import varint

    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def _envelope(body: bytes) -> bytes:
    from fedsllm.wire.codec import varint

    return b"\x1a" + varint(len(body)) + body


def test_decoder_accepts_every_protobuf_layout() -> None:
    """Fields out of order, unpacked shape, repeated scalars (the last wins),
    unknown fields: the fast reader agrees with protobuf's parser."""
    from fedsllm.proto import main_server_pb2
    from fedsllm.wire.codec import varint
    from fedsllm.wire.train import decode_train_request

    data = bytes(range(32))
    layouts = [
        # data first, then the header fields in reverse order
        _field(6, 2, data)
        + _field(5, 0, varint(64))
        + _field(4, 0, varint(256))
        + _field(3, 2, varint(2) + varint(4) + varint(8))
        + _field(2, 2, b"float32")
        + _field(1, 2, b"activations"),
        # unpacked shape, an unknown field, and offset / data sent twice
        _field(1, 2, b"activations")
        + _field(5, 0, varint(7))
        + _field(2, 2, b"float32")
        + _field(3, 0, varint(2))
        + _field(3, 0, varint(4))
        + _field(3, 0, varint(8))
        + _field(6, 2, b"stale")
        + _field(99, 5, b"\0\0\0\0")
        + _field(4, 0, varint(256))
        + _field(5, 0, varint(64))
        + _field(6, 2, data),
    ]
    for body in layouts:
        wire = _envelope(body)
        want = main_server_pb2.TrainRequest.FromString(wire).chunk
        got = decode_train_request(wire)
        assert isinstance(got, Chunk)
        assert (got.name, got.dtype, got.shape) == ("activations", "float32", (2, 4, 8))
        assert (got.total_bytes, got.offset, bytes(got.data)) == (256, 64, data)
        assert got == chunk_from_proto(want)


@pytest.mark.parametrize(
    "wire",
    [
        _envelope(_field(1, 2, b"abc"))[:-1],  # truncated string
        b"\x1a\x03\x32\x7f\x00",  # data longer than the message
        b"\x1a\x02\x08\xff",  # unterminated varint
        b"\x1a\x01\x0b",  # a group start (wire type 3)
    ],
)
def test_decoder_refuses_malformed_bytes_as_protobuf_does(wire: bytes) -> None:
    from google.protobuf.message import DecodeError

    from fedsllm.proto import main_server_pb2
    from fedsllm.wire.train import decode_train_request

    with pytest.raises(DecodeError):
        main_server_pb2.TrainRequest.FromString(wire)
    with pytest.raises(DecodeError):
        decode_train_request(wire)


# ---------------------------------------------------------------- finiteness per chunk


FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _finite_spec(dtype: str) -> list[TensorSpec]:
    return [TensorSpec("activations", frozenset({dtype}), ("B", "T", 8), True)]


@pytest.mark.parametrize("dtype", FLOATS)  # float32 checked through numpy, the others torch
@pytest.mark.parametrize("check_bytes", [1, 8, 2**20])
@pytest.mark.parametrize("chunk_bytes", [3, 5, 64, 10**6])
def test_finiteness_checked_across_odd_chunk_boundaries(
    chunk_bytes: int, check_bytes: int, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN whose bytes straddle two chunks, and a second one later, are both
    counted, whatever slices the check runs in; the error names the first,
    once the tensor is complete."""
    from fedsllm.wire import tensors

    monkeypatch.setattr(tensors, "FINITE_CHECK_BYTES", check_bytes)
    x = torch.zeros(2, 4, 8, dtype=FLOATS[dtype])
    x.view(-1)[13] = float("nan")  # float32 bytes [52, 56): split by 3- and 5-byte chunks
    x.view(-1)[60] = float("-inf")
    chunks = list(frame_to_chunks(tensor_to_frame("activations", x), chunk_bytes))
    asm = ChunkAssembler.for_specs(_finite_spec(dtype))
    with pytest.raises(WireError) as info:
        for chunk in chunks:
            asm.feed(chunk)
    assert info.value.field == "activations.data"
    assert "2 non-finite value(s), first at flat index 13 (nan)" in str(info.value)
    assert asm.frames == {}


@pytest.mark.parametrize(("dtype", "kind"), [("float32", np.ndarray), ("float16", torch.Tensor)])
def test_float32_is_checked_through_numpy_and_half_precision_through_torch(
    dtype: str, kind: type
) -> None:
    x = torch.ones(2, 4, 8, dtype=FLOATS[dtype])
    first = next(frame_to_chunks(tensor_to_frame("activations", x), 40))  # of several
    asm = ChunkAssembler.for_specs(_finite_spec(dtype))
    asm.feed(first)
    assert type(asm._current.elements) is kind


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_finite_values_whose_chunk_sums_overflow_pass(dtype: str) -> None:
    """float32's check sums squares, bfloat16's sums in float32: both overflow
    on these finite values and fall back to the exact check, quietly (numpy's
    overflow warning would land in a role's log for every peer's large value)."""
    big = torch.full((2, 4, 8), torch.finfo(FLOATS[dtype]).max / 2, dtype=FLOATS[dtype])
    asm = ChunkAssembler.for_specs(_finite_spec(dtype))
    for chunk in frame_to_chunks(tensor_to_frame("activations", big), 24):
        asm.feed(chunk)
    assert torch.equal(frame_to_tensor(asm.frames["activations"]), big)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_finite_check_is_quiet_in_concurrent_streams() -> None:
    """The overflow is silenced per call, not by one state that threads share:
    a server's streams check their steps at once, each thread's overflow
    stays quiet, and no call sees another's state (a shared errstate entered
    with `with` refuses a second entry, or restores the wrong state)."""
    import threading

    from fedsllm.wire import tensors

    big = np.full(4096, np.finfo(np.float32).max / 2, dtype=np.float32)
    bad = big.copy()
    bad[-1] = np.inf
    results: list[tuple[bool, bool]] = []
    errors: list[BaseException] = []

    def check() -> None:
        try:
            for _ in range(200):
                results.append((tensors._all_finite(big), tensors._all_finite(bad)))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [(True, False)] * 800
    assert np.geterr()["over"] == "warn"  # this thread's state, as before


def test_non_finite_is_kept_where_no_spec_asks() -> None:
    x = torch.tensor([float("nan"), 1.0])
    out = assemble(frame_to_chunks(tensor_to_frame("g", x), 4))
    assert bytes(out["g"].data) == bytes(tensor_to_frame("g", x).data)


# ---------------------------------------------------------------- receive buffers


def _assemble_with(buffers: ReceiveBuffers, x: torch.Tensor) -> TensorFrame:
    asm = ChunkAssembler(buffers=buffers)
    for chunk in frame_to_chunks(tensor_to_frame("a", x), 40):
        asm.feed(chunk)
    return asm.finish()["a"]


def test_receive_buffers_reused_only_when_released() -> None:
    buffers = ReceiveBuffers()
    first = _assemble_with(buffers, torch.arange(64, dtype=torch.float32))
    held = frame_to_tensor(first, copy=False)
    address = held.data_ptr()
    del first
    # The caller still holds a tensor over the first buffer: a new one is used.
    second = _assemble_with(buffers, torch.arange(64, 128, dtype=torch.float32))
    assert frame_to_tensor(second, copy=False).data_ptr() != address
    assert torch.equal(held, torch.arange(64, dtype=torch.float32))  # untouched
    del held
    # Released now: the next tensor of that size is written into it.
    third = _assemble_with(buffers, torch.arange(128, 192, dtype=torch.float32))
    assert frame_to_tensor(third, copy=False).data_ptr() == address
    assert torch.equal(frame_to_tensor(third), torch.arange(128, 192, dtype=torch.float32))


def test_receive_buffers_kept_while_an_assembled_tensor_lives() -> None:
    """make_tensors: the assembler's own tensor over a pooled buffer keeps the
    buffer from reuse as long as the caller holds it, like any view."""
    buffers = ReceiveBuffers()

    def assemble(x: torch.Tensor) -> torch.Tensor:
        asm = ChunkAssembler(buffers=buffers, make_tensors=True)
        for chunk in frame_to_chunks(tensor_to_frame("a", x), 40):
            asm.feed(chunk)
        return asm.tensors["a"]

    held = assemble(torch.arange(64, dtype=torch.float32))
    address = held.data_ptr()
    second = assemble(torch.arange(64, 128, dtype=torch.float32))
    assert second.data_ptr() != address
    assert torch.equal(held, torch.arange(64, dtype=torch.float32))  # untouched
    del held, second
    third = assemble(torch.arange(128, 192, dtype=torch.float32))
    assert third.data_ptr() == address
    assert torch.equal(third, torch.arange(128, 192, dtype=torch.float32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64"])
@pytest.mark.parametrize("hold", ["frame", "tensor", "numpy view"])
def test_receive_buffers_kept_while_anything_over_them_lives(dtype: str, hold: str) -> None:
    """Whatever a caller keeps of an assembled tensor (the frame alone, the
    tensor the assembler made, a numpy view of the frame's data), the pooled
    buffer under it is not handed out again until it is dropped; the
    assembler's own references (its array, memoryview and tensor, the
    finiteness view) do not keep it."""
    buffers = ReceiveBuffers()
    spec = TensorSpec("a", frozenset({dtype}), require_finite=dtype in FLOATS)

    def assemble(start: int) -> ChunkAssembler:
        x = torch.arange(start, start + 64).to(DTYPES[dtype])
        asm = ChunkAssembler(specs={"a": spec}, buffers=buffers, make_tensors=True)
        for chunk in frame_to_chunks(tensor_to_frame("a", x), 40):
            asm.feed(chunk)
        return asm

    first = assemble(0)
    address = frame_to_tensor(first.frames["a"], copy=False).data_ptr()
    if hold == "frame":
        kept: object = first.frames["a"]
    elif hold == "tensor":
        kept = first.tensors["a"]
    else:
        kept = np.frombuffer(first.frames["a"].data, dtype=np.uint8)
    del first
    second = assemble(64)
    assert frame_to_tensor(second.frames["a"], copy=False).data_ptr() != address
    del second, kept
    third = assemble(128)
    assert frame_to_tensor(third.frames["a"], copy=False).data_ptr() == address
    assert torch.equal(third.tensors["a"], torch.arange(128, 192).to(DTYPES[dtype]))


def test_receive_buffers_are_bounded() -> None:
    buffers = ReceiveBuffers(max_buffers=2)
    held = [buffers.take(n) for n in (8, 16, 24)]
    assert len(held) == 3 and len(buffers._buffers) == 2


def test_decoder_reads_headers_too_long_to_cache() -> None:
    from fedsllm.wire.train import decode_train_request, encode_train_request

    chunk = Chunk(
        name="n" * 5000, dtype="uint8", shape=(3,), total_bytes=3, offset=1, data=b"\x07\x08"
    )
    assert decode_train_request(encode_train_request(chunk)) == chunk


# ---------------------------------------------------------------- numpy fast path


@pytest.mark.parametrize("name", ["float32", "float16", "int64", "int32", "bool", "uint8"])
def test_numpy_fast_path_frames_match_the_torch_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual tensor takes one torch call (numpy()); its frame is the one the
    general path makes (dtype, shape, the same bytes), and decoding it without
    a copy views the buffer, writable, through either path."""
    from fedsllm.wire import tensors

    x = _sample(DTYPES[name], (2, 3, 4))
    fast = tensors._frame_via_numpy("t", x, None)
    assert fast is not None
    with monkeypatch.context() as m:
        m.setattr(tensors, "_frame_via_numpy", lambda *_: None)
        general = tensor_to_frame("t", x)
        m.setattr(tensors, "_NUMPY_DTYPES", {})
        buf = bytearray(general.data)
        via_torch = frame_to_tensor(
            TensorFrame(name="t", dtype=name, shape=general.shape, data=memoryview(buf)),
            copy=False,
        )
    assert (fast.dtype, fast.shape, bytes(fast.data)) == (
        general.dtype,
        general.shape,
        bytes(general.data),
    )
    buf = bytearray(fast.data)
    view = frame_to_tensor(
        TensorFrame(name="t", dtype=fast.dtype, shape=fast.shape, data=memoryview(buf)), copy=False
    )
    assert torch.equal(view, x) and torch.equal(via_torch, x)
    size = DTYPE_ITEMSIZE[name]
    view.view(-1)[0] = view.view(-1)[1]
    assert bytes(buf[:size]) == bytes(buf[size : 2 * size])


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(2, 3, requires_grad=True),
        torch.randn(3, 2).t(),
        torch.tensor(1.5),
        torch.randn(2, 3).to(torch.bfloat16),
    ],
    ids=["requires_grad", "non_contiguous", "zero_dim", "bfloat16"],
)
def test_numpy_fast_path_leaves_the_rest_to_the_general_path(tensor: torch.Tensor) -> None:
    from fedsllm.wire import tensors

    assert tensors._frame_via_numpy("t", tensor, None) is None
    frame = tensor_to_frame("t", tensor)
    assert torch.equal(frame_to_tensor(frame), tensor.detach())


# ---------------------------------------------------------------- per-message fast paths


@pytest.mark.parametrize(
    "kind", ["bytes", "bytearray", "memoryview", "int8_view", "ndarray", "gil_free_size"]
)
def test_assembler_copies_every_buffer_kind(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk data may be bytes (a protobuf TensorChunk), a view of received
    bytes (the codec), or any other buffer: the usual sizes are copied by buffer
    assignment, large ones, arrays and views of another one-byte format by
    numpy; every byte lands either way."""
    import numpy as np

    from fedsllm.wire import tensors

    if kind == "gil_free_size":
        monkeypatch.setattr(tensors, "GIL_FREE_COPY_BYTES", 64)
    tensor = torch.arange(100, dtype=torch.float32)
    frame = tensor_to_frame("t", tensor)
    wrap = {
        "bytes": bytes,
        "bytearray": bytearray,
        "memoryview": lambda d: memoryview(bytes(d)),
        "int8_view": lambda d: memoryview(bytes(d)).cast("b"),
        "ndarray": lambda d: np.frombuffer(bytes(d), dtype=np.uint8),
        "gil_free_size": lambda d: memoryview(bytes(d)),
    }[kind]
    chunks = [
        Chunk(c.name, c.dtype, c.shape, c.total_bytes, c.offset, wrap(c.data))
        for c in frame_to_chunks(frame, 96)
    ]
    (got,) = ChunkAssembler().feed_all(chunks).values()
    assert torch.equal(frame_to_tensor(got), tensor)


def test_chunk_prefixes_are_cached_exact_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's chunks repeat their prefixes step after step: each is built
    once and reused, byte for byte what protobuf writes, and the cache never
    holds more than its bound (a peer's odd shapes cannot grow it)."""
    from fedsllm.proto import main_server_pb2
    from fedsllm.wire import codec
    from fedsllm.wire.train import encode_train_request, train_request

    monkeypatch.setattr(codec, "_PREFIXES", {})
    monkeypatch.setattr(codec, "_MAX_PREFIXES", 8)

    def encode_all(frame: TensorFrame) -> None:
        for chunk in frame_to_chunks(frame, 64):
            wire = encode_train_request(chunk)
            assert wire == train_request(chunk).SerializeToString()
            assert main_server_pb2.TrainRequest.FromString(wire).chunk.offset == chunk.offset
            assert len(codec._PREFIXES) <= 8

    small = tensor_to_frame("t", torch.arange(64, dtype=torch.float32))  # 4 chunks
    encode_all(small)
    cached = dict(codec._PREFIXES)
    assert len(cached) == 4
    encode_all(small)  # the next step: every prefix read from the cache, none built
    assert codec._PREFIXES.keys() == cached.keys()
    assert all(codec._PREFIXES[k] is v for k, v in cached.items())
    encode_all(tensor_to_frame("u", torch.arange(400, dtype=torch.float32)))  # 25 chunks


@pytest.mark.parametrize("wire", ["int64", "int32", "float32", "float16", "uint8", "bool"])
def test_spec_value_check_sees_the_complete_tensor_once(wire: str) -> None:
    """TensorSpec.check runs when the last chunk is in, not before, with the
    tensor's values (shape and dtype as sent) read-only in place."""
    tensor = (torch.arange(60) % 7).reshape(3, 4, 5).to(DTYPES[wire])
    seen: list[np.ndarray] = []

    def check(values: np.ndarray) -> None:
        seen.append(values.copy())
        with pytest.raises(ValueError, match="read-only"):
            values[0, 0, 0] = 0

    spec = TensorSpec("t", frozenset({wire}), check=check)
    assembler = ChunkAssembler.for_specs([spec])
    chunks = list(frame_to_chunks(tensor_to_frame("t", tensor), 7))
    assert len(chunks) > 2
    for chunk in chunks[:-1]:
        assert assembler.feed(chunk) is None
    assert seen == []
    assembler.feed(chunks[-1])
    assert len(seen) == 1
    assert seen[0].shape == (3, 4, 5) and seen[0].dtype == np.dtype(wire)
    np.testing.assert_array_equal(seen[0], tensor.numpy())


def test_spec_value_check_refusal_keeps_the_frame_out() -> None:
    def refuse(_values: np.ndarray) -> None:
        raise WireError("t", "refused by its check")

    assembler = ChunkAssembler.for_specs([TensorSpec("t", frozenset({"int64"}), check=refuse)])
    with pytest.raises(WireError, match="refused by its check"):
        for chunk in frame_to_chunks(tensor_to_frame("t", torch.arange(10)), 16):
            assembler.feed(chunk)
    assert assembler.frames == {}


def test_spec_value_check_refuses_bfloat16() -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        TensorSpec("t", frozenset({"float32", "bfloat16"}), check=lambda _values: None)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_assembler_makes_tensors_over_its_buffers(name: str) -> None:
    """make_tensors: each finished tensor equals the one sent, bit for bit,
    and lies in the frame's buffer (no copy); without it, none is made."""
    x = _sample(DTYPES[name], (3, 5, 7))
    chunks = list(frame_to_chunks(tensor_to_frame("t", x), 13))
    made = ChunkAssembler(make_tensors=True)
    plain = ChunkAssembler()
    for chunk in chunks:
        made.feed(chunk)
        plain.feed(chunk)
    assert plain.tensors == {}
    t = made.tensors["t"]
    assert t.dtype == x.dtype and t.shape == x.shape
    assert torch.equal(t.view(torch.uint8), x.view(torch.uint8))
    buf = np.frombuffer(made.frames["t"].data, dtype=np.uint8)
    assert t.data_ptr() == buf.ctypes.data


def test_received_tensor_uses_the_assembled_one() -> None:
    """StepUpload.tensor hands out the assembler's tensor itself, cast when
    asked; a record without one falls back to its frame."""
    from fedsllm.wire.messages import StepHeaderInfo
    from fedsllm.wire.train import StepUpload

    x = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    assembler = ChunkAssembler(make_tensors=True)
    for chunk in frame_to_chunks(tensor_to_frame("t", x), 40):
        assembler.feed(chunk)
    header = StepHeaderInfo(round=0, step=0, mode="eval", downlink_bps=0.0, tensor_names=("t",))
    upload = StepUpload(header, dict(assembler.frames), 0.0, dict(assembler.tensors))
    assert upload.tensor("t") is assembler.tensors["t"]
    as_float = upload.tensor("t", torch.float32)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, x.float())
    bare = StepUpload(header, dict(assembler.frames), 0.0)
    assert torch.equal(bare.tensor("t"), x)
