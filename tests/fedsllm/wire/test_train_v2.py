"""Train wire version 2 without gRPC: steps folded into StepPart / ReplyPart
messages round-trip bit for bit (every wire dtype, every shape, odd chunk
boundaries), the bytes are protobuf's, and every malformed layout is refused
naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from google.protobuf.message import DecodeError

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2
from fedsllm.wire.messages import (
    StepHeaderInfo,
    StepResultInfo,
    TrainHelloInfo,
    TrainWelcomeInfo,
    step_header_to_proto,
)
from fedsllm.wire.packing import PART_SLACK, pack_chunks
from fedsllm.wire.tensors import (
    DTYPE_ITEMSIZE,
    Chunk,
    TensorFrame,
    TensorSpec,
    chunk_to_proto,
    frame_to_chunks,
    frame_to_tensor,
    tensor_to_frame,
)
from fedsllm.wire.train import (
    ReceivedPart,
    ReplyPart,
    StepDownload,
    StepPart,
    StepUpload,
    decode_train_request,
    decode_train_response,
    encode_train_request,
    encode_train_response,
    message_bytes,
    parse_train_request,
    parse_train_response,
    read_downlink,
    read_uplink,
    step_download_responses,
    step_upload_requests,
    train_request,
    train_response,
)

from ._echo import echo_specs
from .test_tensors import DTYPES, SHAPES, _special

HELLO = TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32")
WELCOME = TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=2**20)
ANY = frozenset(DTYPE_ITEMSIZE)


def _any_specs(_item: object) -> list[TensorSpec]:
    return [TensorSpec(n, ANY) for n in ("t", "small", "activations_grad")]


def _header(step: int, names: tuple[str, ...]) -> StepHeaderInfo:
    return StepHeaderInfo(
        round=3, step=step, mode="train", downlink_bps=5e6, tensor_names=names, sent_unix_s=1.5
    )


def _result(step: int, names: tuple[str, ...]) -> StepResultInfo:
    return StepResultInfo(
        round=3, step=step, loss=0.25, num_tokens=7, server_compute_s=0.5, tensor_names=names
    )


def _up_wire(items: list, wire: str) -> list:
    """Through bytes, as on the wire: the project's codec, or plain protobuf
    (a peer with the generated stubs) into the project's decoder and back."""
    if wire == "codec":
        return [decode_train_request(encode_train_request(x)) for x in items]
    return [
        main_server_pb2.TrainRequest.FromString(train_request(x).SerializeToString()) for x in items
    ]


def _down_wire(items: list, wire: str) -> list:
    if wire == "codec":
        return [decode_train_response(encode_train_response(x)) for x in items]
    return [
        main_server_pb2.TrainResponse.FromString(train_response(x).SerializeToString())
        for x in items
    ]


def _chunk_sizes(num_bytes: int) -> list[int]:
    """1, primes, and sizes the tensor is exactly a multiple of."""
    sizes = {1, 2, 3, 7, 13, 4093, num_bytes}
    sizes |= {num_bytes // k for k in (2, 3, 4) if num_bytes % k == 0}
    return sorted(sizes)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("wire", ["codec", "protobuf"])
@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
def test_step_round_trip_bit_exact(name: str, shape: tuple[int, ...], wire: str) -> None:
    """Every wire dtype and shape (0-d included), at odd chunk boundaries, up and
    down: the bytes that arrive are the bytes sent, NaN payloads included."""
    x = _special(DTYPES[name], shape)
    frame = tensor_to_frame("t", x)
    small = tensor_to_frame("small", torch.arange(5, dtype=torch.int64))
    for chunk_bytes in _chunk_sizes(frame.num_bytes):
        items: list = [HELLO]
        for step in range(2):  # two steps: the reused receive buffers too
            items += step_upload_requests(
                _header(step, ("t", "small")), [frame, small], chunk_bytes
            )
        got = list(read_uplink(_up_wire(items, wire), _any_specs))
        assert got[0] == HELLO and len(got) == 3
        for step, upload in enumerate(got[1:]):
            assert isinstance(upload, StepUpload)
            assert upload.header == _header(step, ("t", "small"))
            out = upload.frames["t"]
            assert (out.dtype, out.shape) == (name, shape)
            assert bytes(out.data) == bytes(frame.data), chunk_bytes
            assert bytes(upload.frames["small"].data) == bytes(small.data)
            y = upload.tensor("t")  # made before its bytes arrived (make_tensors)
            assert y.dtype == x.dtype and y.shape == x.shape
            assert bytes(y.reshape(-1).view(torch.uint8).numpy()) == bytes(frame.data)

        grad = TensorFrame("activations_grad", frame.dtype, frame.shape, frame.data)
        down: list = [WELCOME]
        down += step_download_responses(_result(0, ("activations_grad",)), [grad], chunk_bytes)
        down += step_download_responses(_result(1, ()), [], chunk_bytes)
        replies = list(read_downlink(_down_wire(down, wire), _any_specs))
        assert replies[0] == WELCOME
        train, evals = replies[1:]
        assert isinstance(train, StepDownload) and train.result == _result(0, ("activations_grad",))
        assert bytes(train.frames["activations_grad"].data) == bytes(frame.data), chunk_bytes
        g = train.tensor("activations_grad")
        assert g.dtype == x.dtype and g.shape == x.shape
        assert bytes(g.reshape(-1).view(torch.uint8).numpy()) == bytes(frame.data)
        assert evals.result == _result(1, ()) and evals.frames == {}


def test_empty_tensors_are_refused_at_both_ends() -> None:
    """The wire has no empty tensor: the sender refuses one, and so does the
    receiver, naming the field."""
    with pytest.raises(WireError) as info:
        tensor_to_frame("t", torch.zeros(2, 0))
    assert info.value.field == "t.shape"
    chunk = Chunk("t", "float32", (2, 0), 0, 0, b"\0")
    items = [HELLO, StepPart((chunk,), _header(0, ("t",)), True)]
    with pytest.raises(WireError) as info:
        list(read_uplink(_up_wire(items, "codec"), _any_specs))
    assert info.value.field == "t.shape[1]"


# ---------------------------------------------------------------- layout


def _echo_frames(d: int = 64) -> list[TensorFrame]:
    gen = torch.Generator().manual_seed(d)
    return [
        tensor_to_frame("activations", torch.randn(2, 8, d, generator=gen)),
        tensor_to_frame("attention_mask", torch.ones(2, 8, dtype=torch.int64)),
        tensor_to_frame("labels", torch.randint(0, 9, (2, 8), generator=gen)),
    ]


NAMES = ("activations", "attention_mask", "labels")


@pytest.mark.parametrize("chunk_bytes", [1024, 1000, 4096, 10**6])
def test_a_step_is_as_many_messages_as_its_largest_tensor_has_chunks(chunk_bytes: int) -> None:
    frames = _echo_frames()  # 4096 bytes of activations, 128 + 128 of mask, labels
    parts = list(step_upload_requests(_header(0, NAMES), frames, chunk_bytes))
    assert len(parts) <= math.ceil(4096 / chunk_bytes)
    assert parts[0].header == _header(0, NAMES)
    assert all(p.header is None for p in parts[1:])
    assert [p.end for p in parts] == [False] * (len(parts) - 1) + [True]
    if 4096 % chunk_bytes == 0:
        # The small tensors ride whole on the last message, after the activations.
        assert [c.name for c in parts[-1].chunks] == list(NAMES)
    got = [(c.name, c.offset, len(c.data)) for p in parts for c in p.chunks]
    assert got == [(c.name, c.offset, len(c.data)) for c in _flat(frames, chunk_bytes)]
    limit = chunk_bytes + chunk_bytes // PART_SLACK
    assert all(sum(len(c.data) for c in p.chunks) <= limit for p in parts)
    # Downlink: the result in the first part, one part per gradient chunk.
    grad = tensor_to_frame("activations_grad", torch.randn(2, 8, 64))
    reply = list(step_download_responses(_result(0, ("activations_grad",)), [grad], chunk_bytes))
    assert len(reply) <= math.ceil(4096 / chunk_bytes)
    assert reply[0].result is not None and all(r.result is None for r in reply[1:])


@pytest.mark.parametrize("chunk_bytes", [1024, 4096])
def test_small_tensors_named_first_ride_whole_on_the_first_message(chunk_bytes: int) -> None:
    """The order client.remote sends a step in: the mask and labels share the
    header's message with the first activation chunk; every later message is
    one activation chunk."""
    acts, mask, labels = _echo_frames()
    names = ("attention_mask", "labels", "activations")
    parts = list(step_upload_requests(_header(0, names), [mask, labels, acts], chunk_bytes))
    assert [(c.name, c.offset) for c in parts[0].chunks] == [
        ("attention_mask", 0),
        ("labels", 0),
        ("activations", 0),
    ]
    assert [[(c.name, c.offset) for c in p.chunks] for p in parts[1:]] == [
        [("activations", i * chunk_bytes)] for i in range(1, 4096 // chunk_bytes)
    ]


def _flat(frames: list[TensorFrame], chunk_bytes: int) -> list[Chunk]:
    return [c for f in frames for c in frame_to_chunks(f, chunk_bytes)]


def test_packing_keeps_order_and_every_byte() -> None:
    frames = [
        tensor_to_frame("a", torch.arange(10, dtype=torch.uint8)),
        tensor_to_frame("b", torch.arange(3, dtype=torch.uint8)),
        tensor_to_frame("c", torch.arange(9, dtype=torch.uint8)),
    ]
    groups = list(pack_chunks(frames, 4))  # limit 5 bytes a message
    flat = [c for g in groups for c in g]
    assert [(c.name, c.offset, len(c.data)) for c in flat] == [
        ("a", 0, 4), ("a", 4, 4), ("a", 8, 2), ("b", 0, 3), ("c", 0, 4), ("c", 4, 4), ("c", 8, 1),
    ]  # fmt: skip
    assert [[(c.name, c.offset) for c in g] for g in groups] == [
        [("a", 0)], [("a", 4)], [("a", 8), ("b", 0)], [("c", 0)], [("c", 4), ("c", 8)],
    ]  # fmt: skip
    assert list(pack_chunks([], 4)) == [()]


def test_a_step_of_small_tensors_is_one_message() -> None:
    frames = _echo_frames(d=1)
    (part,) = step_upload_requests(_header(0, NAMES), frames, 2**20)
    assert part.header is not None and part.end and len(part.chunks) == 3


def test_part_bytes_are_protobufs_and_sized_before_copying() -> None:
    """A peer with the generated stubs reads what the codec writes and the
    reverse; message_bytes (what a shaper charges) is the encoded size, known
    from views of the tensors before any payload is copied."""
    frames = _echo_frames()
    parts = list(step_upload_requests(_header(0, NAMES), frames, 1000))
    parts.append(StepPart((), _header(1, NAMES), True))  # header and end only
    for part in parts:
        size = message_bytes(part)
        assert any(isinstance(p, memoryview) for p in part.pieces()) == bool(part.chunks)
        wire = encode_train_request(part)
        assert len(wire) == size
        assert wire == train_request(part).SerializeToString()
        assert parse_train_request(decode_train_request(wire)) == part
        assert parse_train_request(main_server_pb2.TrainRequest.FromString(wire)) == part
    grad = tensor_to_frame("activations_grad", torch.randn(2, 8, 64))
    # A result of all defaults serializes to b"": it must still be sent.
    for result in (_result(0, ("activations_grad",)), StepResultInfo(
        round=0, step=0, loss=0.0, num_tokens=0, server_compute_s=0.0,
        tensor_names=("activations_grad",),
    )):  # fmt: skip
        for reply in step_download_responses(result, [grad], 1000):
            wire = encode_train_response(reply)
            assert len(wire) == message_bytes(reply)
            assert wire == train_response(reply).SerializeToString()
            assert parse_train_response(decode_train_response(wire)) == reply
            assert parse_train_response(main_server_pb2.TrainResponse.FromString(wire)) == reply


def test_decoded_part_views_the_received_bytes() -> None:
    """No copy between gRPC's message bytes and the assembler."""
    part = next(step_upload_requests(_header(0, NAMES), _echo_frames(), 1000))
    wire = encode_train_request(part)
    decoded = decode_train_request(wire)
    assert isinstance(decoded, ReceivedPart)
    (chunk,) = decoded.chunks
    assert isinstance(chunk.data, memoryview) and chunk.data.obj is wire
    assert bytes(chunk.data) == bytes(part.chunks[0].data)


def test_decoder_accepts_other_protobuf_layouts() -> None:
    """Any valid encoding reads the same: the end flag before the chunks, the
    header last, unknown fields."""
    frames = _echo_frames()
    (part,) = step_upload_requests(_header(0, NAMES), frames, 2**20)
    msg = train_request(part).part
    chunks = b"".join(b"\x12" + _varint(c.ByteSize()) + c.SerializeToString() for c in msg.chunks)
    header = msg.header.SerializeToString()
    body = b"\x18\x01" + b"\x78\x05" + chunks + b"\x0a" + _varint(len(header)) + header
    wire = b"\x2a" + _varint(len(body)) + body
    got = parse_train_request(decode_train_request(wire))
    assert got == part


def test_decoder_accepts_over_long_field_keys() -> None:
    """Protobuf allows a field key written as a longer varint than needed; the
    decoder's one-byte fast path leaves such keys to the general scan, which
    reads them as protobuf does."""
    frames = _echo_frames()
    (part,) = step_upload_requests(_header(0, NAMES), frames, 2**20)
    msg = train_request(part).part
    chunks = b"".join(
        b"\x92\x00" + _varint(c.ByteSize()) + c.SerializeToString() for c in msg.chunks
    )
    header = msg.header.SerializeToString()
    body = b"\x8a\x00" + _varint(len(header)) + header + chunks + b"\x98\x00\x01"
    wire = b"\x2a" + _varint(len(body)) + body
    assert main_server_pb2.TrainRequest.FromString(wire).part == msg
    got = decode_train_request(wire)
    assert isinstance(got, ReceivedPart) and all(isinstance(c.data, memoryview) for c in got.chunks)
    assert parse_train_request(got) == part


@pytest.fixture
def fresh_layouts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple]]:
    """Empty layout tables for one test (the module's are shared by every
    stream in the process); yields the list of chunks decoded field by field."""
    from fedsllm.wire import codec

    monkeypatch.setattr(codec, "_MESSAGES", {})
    monkeypatch.setattr(codec, "_TAILS", {})
    monkeypatch.setattr(codec, "_layout_count", 0)
    decoded: list[tuple] = []
    fields = codec._chunk_fields
    monkeypatch.setattr(codec, "_chunk_fields", lambda *a: decoded.append(a) or fields(*a))
    yield decoded


def test_a_repeated_layout_is_matched_not_decoded(fresh_layouts: list[tuple]) -> None:
    """Every message of a step repeats the bytes of the last step's around its
    payloads (the first after its header): the decoder matches them against
    the layout it read then (the same object) and reads no field, and what it
    gives is what a decode gives. Changing any byte outside the payloads
    makes it decode again."""
    from fedsllm.wire import codec

    frames = _echo_frames()
    steps = [list(step_upload_requests(_header(i, NAMES), frames, 1000)) for i in range(2)]
    first = [decode_train_request(encode_train_request(p)) for p in steps[0]]
    assert fresh_layouts
    fresh_layouts.clear()
    second = [decode_train_request(encode_train_request(p)) for p in steps[1]]
    assert not fresh_layouts
    assert all(a.layout is b.layout for a, b in zip(first, second, strict=True))
    assert [parse_train_request(p) for p in second] == steps[1]
    # A later message of the step: one byte of its offset field changed.
    wire = encode_train_request(steps[1][1])
    at = wire.index(bytes(steps[1][1].chunks[0].data[:16]))
    changed = wire[: at - 4] + bytes([wire[at - 4] ^ 1]) + wire[at - 3 :]
    assert codec.decode_part(5, wire)[1] is second[1].layout
    assert not fresh_layouts
    assert codec.decode_part(5, changed)[1] is not second[1].layout
    assert fresh_layouts


def _part_wire(fields: list[bytes]) -> bytes:
    """A TrainRequest whose StepPart is `fields` (each a serialized field) in order."""
    body = b"".join(fields)
    return b"\x2a" + _varint(len(body)) + body


def test_a_head_anywhere_is_read_every_time(fresh_layouts: list[tuple]) -> None:
    """A head that is not the message's first field (fields in another order,
    or its key written long) is the step's header each time the message comes,
    and a malformed one is refused each time: a message with a head is never
    matched whole, as its head would then be lost."""
    chunk = chunk_to_proto(Chunk("t", "uint8", (4,), 4, 0, b"abcd"))
    header = step_header_to_proto(_header(3, ("t",))).SerializeToString()
    field_chunk = b"\x12" + _varint(chunk.ByteSize()) + chunk.SerializeToString()
    layouts = [
        [b"\x18\x01", b"\x0a" + _varint(len(header)) + header, field_chunk],
        [b"\x8a\x00" + _varint(len(header)) + header, field_chunk, b"\x18\x01"],
    ]
    for fields in layouts:
        wire = _part_wire(fields)
        for _ in range(3):
            got = parse_train_request(decode_train_request(wire))
            assert got.header == _header(3, ("t",)) and got.end
    broken = _part_wire([field_chunk, b"\x0a\x01\xff"])
    for _ in range(3):
        with pytest.raises(DecodeError):
            decode_train_request(broken)


def test_two_heads_are_merged_as_protobuf_merges(fresh_layouts: list[tuple]) -> None:
    """Protobuf merges a repeated message field; the codec leaves a part with
    two heads to it, every time: the header is the merge, and a malformed
    one (first or second) is refused."""
    chunk = chunk_to_proto(Chunk("t", "uint8", (4,), 4, 0, b"abcd"))
    field_chunk = b"\x12" + _varint(chunk.ByteSize()) + chunk.SerializeToString()
    first = step_header_to_proto(_header(3, ("t",))).SerializeToString()
    second = main_server_pb2.StepHeader(round=7).SerializeToString()
    heads = [b"\x0a" + _varint(len(h)) + h for h in (first, second)]
    for fields in ([heads[0], field_chunk, heads[1]], [heads[0], heads[1], field_chunk]):
        wire = _part_wire([*fields, b"\x18\x01"])
        for _ in range(3):
            got = parse_train_request(decode_train_request(wire))
            assert (
                got.header
                == parse_train_request(main_server_pb2.TrainRequest.FromString(wire)).header
            )
            assert got.header.round == 7 and got.header.step == 3
    for fields in (
        [heads[0], field_chunk, b"\x0a\x01\xff"],
        [b"\x0a\x01\xff", heads[0], field_chunk],
    ):
        for _ in range(3):
            with pytest.raises(DecodeError):
                decode_train_request(_part_wire(fields))


def test_a_tensor_of_many_chunks_is_matched_whole(fresh_layouts: list[tuple]) -> None:
    """A large tensor's middle chunks are messages of one length that differ
    only in their offset: every one of them is matched on the next step."""
    frames = [tensor_to_frame("t", torch.randn(64, 160))]  # 40 960 bytes, 41 chunks
    steps = [list(step_upload_requests(_header(i, ("t",)), frames, 1000)) for i in range(2)]
    lengths = [len(encode_train_request(p)) for p in steps[0]]
    assert len(lengths) == 41 and max(lengths.count(n) for n in lengths) > 16
    for part in steps[0]:
        decode_train_request(encode_train_request(part))
    fresh_layouts.clear()
    second = [decode_train_request(encode_train_request(p)) for p in steps[1]]
    assert not fresh_layouts
    assert [parse_train_request(p) for p in second] == steps[1]


def test_a_lookup_survives_another_stream_adding_layouts(fresh_layouts: list[tuple]) -> None:
    """Deserializers of several streams run on gRPC's threads at once: a
    lookup walks a snapshot of the first-run lengths, so a length another
    stream adds meanwhile cannot break it."""
    from fedsllm.wire import codec

    parts = list(step_upload_requests(_header(0, NAMES), _echo_frames(), 1000))
    wire = encode_train_request(parts[1])
    kept = decode_train_request(wire).layout
    (by_first,) = codec._MESSAGES[5].values()

    class Growing(dict):
        def get(self, key: object, default: object = None) -> object:
            by_first.setdefault(len(by_first) + 10_000, {})  # another stream keeps one
            return super().get(key, default)

    real = dict(by_first)
    by_first.clear()
    by_first[1] = Growing()  # looked up first, and misses
    by_first.update(real)
    fresh_layouts.clear()
    assert decode_train_request(wire).layout is kept
    assert not fresh_layouts


def test_layouts_are_kept_per_envelope_and_bounded(
    fresh_layouts: list[tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's layout never reads a response (their envelopes differ); the
    tables hold at most _MAX_LAYOUTS layouts, _MAX_FIRST_RUNS first-run
    lengths for one message length, and none with more than
    _MAX_LAYOUT_CHUNKS chunks or large fields outside its payloads, so no
    peer can grow them or make a lookup costly."""
    from fedsllm.wire import codec

    def kept() -> int:
        return sum(
            len(by_bytes)
            for tables in (codec._MESSAGES, codec._TAILS)
            for index in tables.values()
            for by_first in index.values()
            for by_bytes in by_first.values()
        )

    parts = list(step_upload_requests(_header(0, NAMES), _echo_frames(), 1000))
    wire = encode_train_request(parts[1])
    decode_train_request(wire)
    assert kept() == 1 and 4 not in codec._MESSAGES
    with pytest.raises(WireError, match="no field of the oneof"):
        parse_train_response(decode_train_response(wire))  # field 5 of a response: unknown
    assert kept() == 1
    monkeypatch.setattr(codec, "_MAX_LAYOUTS", 5)
    for d in range(8, 64, 8):  # new shapes, new layouts
        for part in step_upload_requests(_header(0, NAMES), _echo_frames(d), 1000):
            decode_train_request(encode_train_request(part))
            assert kept() <= 5
    # Messages of one length whose first runs differ in length (longer names,
    # shorter data): at most _MAX_FIRST_RUNS of them are kept.
    monkeypatch.setattr(codec, "_MESSAGES", {})
    monkeypatch.setattr(codec, "_TAILS", {})
    monkeypatch.setattr(codec, "_MAX_FIRST_RUNS", 2)
    runs = []
    for k in range(1, 5):
        c = chunk_to_proto(Chunk("t" * k, "uint8", (20 - k,), 20 - k, 0, bytes(20 - k)))
        runs.append(_part_wire([b"\x12" + _varint(c.ByteSize()) + c.SerializeToString()]))
    assert len({len(w) for w in runs}) == 1
    for w in runs:
        decode_train_request(w)
    assert kept() == 2
    fresh_layouts.clear()
    decode_train_request(runs[3])  # not kept: read again
    assert fresh_layouts
    monkeypatch.setattr(codec, "_MESSAGES", {})
    big = Chunk("t", "uint8", (8,), 8, 0, bytes(8))
    msg = main_server_pb2.TrainRequest(
        part=main_server_pb2.StepPart(chunks=[chunk_to_proto(big)], end=True)
    ).SerializeToString()
    padded = (
        msg[:1] + _varint(len(msg) - 2 + 5003) + msg[2:] + b"\x7a" + _varint(5000) + bytes(5000)
    )
    assert parse_train_request(decode_train_request(padded)).chunks == (big,)
    tiny = [chunk_to_proto(Chunk(f"t{i}", "uint8", (1,), 1, 0, b"x")) for i in range(17)]
    many = main_server_pb2.TrainRequest(
        part=main_server_pb2.StepPart(chunks=tiny, end=True)
    ).SerializeToString()
    assert len(parse_train_request(decode_train_request(many)).chunks) == 17
    assert kept() == 0


def _varint(value: int) -> bytes:
    from fedsllm.wire.codec import varint

    return varint(value)


# ---------------------------------------------------------------- refusals


def _parts(step: int = 0, chunk_bytes: int = 1000) -> list[StepPart]:
    return list(step_upload_requests(_header(step, NAMES), _echo_frames(), chunk_bytes))


def _strip(part: StepPart, header: bool = False, end: bool = False) -> StepPart:
    return StepPart(part.chunks, None if header else part.header, False if end else part.end)


def _chunks(name: str, chunk_bytes: int) -> tuple[Chunk, ...]:
    frame = {f.name: f for f in _echo_frames()}[name]
    return tuple(frame_to_chunks(frame, chunk_bytes))


def _bad_total() -> list:
    (c,) = _chunks("attention_mask", 4096)
    bad = Chunk(c.name, c.dtype, c.shape, c.total_bytes + 8, 0, c.data)
    acts = _chunks("activations", 4096)
    return [HELLO, StepPart((*acts, bad), _header(0, NAMES), True)]


def _nan() -> list:
    frames = _echo_frames()
    acts = frame_to_tensor(frames[0]).clone()
    acts[1, 2, 3] = float("inf")
    frames[0] = tensor_to_frame("activations", acts)
    return [HELLO, *step_upload_requests(_header(0, NAMES), frames, 1000)]


def _labels_dtype() -> list:
    frames = _echo_frames()
    frames[2] = tensor_to_frame("labels", torch.zeros(2, 8))
    return [HELLO, *step_upload_requests(_header(0, NAMES), frames, 1000)]


REFUSALS = [
    (
        "header missing on the first message",
        lambda: [HELLO, _strip(_parts()[0], header=True), *_parts()[1:]],
        "StepPart.header",
        "chunk of 'activations' outside a step",
    ),
    (
        "end flag missing before the next step's header",
        lambda: [HELLO, *_parts()[:-1], _strip(_parts()[-1], end=True), *_parts(1)],
        "StepPart.end",
        "header of step 1 before the end of step 0",
    ),
    (
        "end flag missing, then the stream ends",
        lambda: [HELLO, *_parts()[:-1], _strip(_parts()[-1], end=True)],
        "TrainRequest.kind",
        "stream ended inside step 0",
    ),
    (
        "header twice in one step",
        lambda: [HELLO, _parts()[0], _parts()[0]],
        "StepPart.end",
        "header of step 0 before the end of step 0",
    ),
    (
        "end without a header",
        lambda: [HELLO, StepPart((), None, True)],
        "StepPart.end",
        "end without a step header",
    ),
    (
        "empty part",
        lambda: [HELLO, StepPart()],
        "StepPart",
        "carries no header, chunk or end",
    ),
    (
        "chunks out of order",
        lambda: [HELLO, _parts()[0], _parts()[2], _parts()[1], *_parts()[3:]],
        "activations.offset",
        "=2000, expected 1000",
    ),
    (
        "tensors interleaved",
        lambda: [
            HELLO,
            StepPart(_chunks("activations", 1000)[:1] + _chunks("labels", 1000), _header(0, NAMES)),
        ],
        "chunk.name",
        "'labels' started before 'activations' was complete",
    ),
    (
        "end flag before a tensor is complete",
        lambda: [HELLO, _parts()[0], StepPart(_parts()[1].chunks, None, True)],
        "activations.data",
        "incomplete: 2000 of 4096 bytes received",
    ),
    (
        "end flag before every tensor came",
        lambda: [HELLO, StepPart(_chunks("activations", 4096), _header(0, NAMES), True)],
        "attention_mask",
        "['attention_mask', 'labels'] never arrived",
    ),
    ("size mismatch", _bad_total, "attention_mask.total_bytes", "=136, but shape (2, 8)"),
    ("NaN or Inf", _nan, "activations.data", "1 non-finite value(s)"),
    ("labels not integers", _labels_dtype, "labels.dtype", "=float32, expected one of ['int64']"),
    (
        "a tensor the header does not name",
        lambda: [HELLO, StepPart(_chunks("activations", 4096), _header(0, ("labels",)), True)],
        "chunk.name",
        "unexpected tensor 'activations'",
    ),
]


@pytest.mark.parametrize("wire", ["codec", "protobuf"])
@pytest.mark.parametrize(
    ("make", "field", "needle"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_uplink_refuses(make, field: str, needle: str, wire: str) -> None:
    with pytest.raises(WireError) as info:
        list(read_uplink(_up_wire(make(), wire), echo_specs))
    assert info.value.field == field
    assert needle in info.value.reason


def test_downlink_refuses() -> None:
    grad = tensor_to_frame("activations_grad", torch.randn(2, 8, 64))
    result = _result(0, ("activations_grad",))
    parts = list(step_download_responses(result, [grad], 1000))
    spec = [TensorSpec("activations_grad", frozenset({"float32"}), (2, 8, 64))]

    def read(items: list) -> list:
        return list(read_downlink(_down_wire(items, "codec"), lambda r: spec))

    with pytest.raises(WireError) as info:
        read([WELCOME, ReplyPart(parts[0].chunks), *parts[1:]])
    assert info.value.field == "ReplyPart.result"
    assert "chunk of 'activations_grad' outside a step" in info.value.reason
    with pytest.raises(WireError, match="result of step 0 before the tensors of step 0"):
        read([WELCOME, parts[0], parts[0]])
    with pytest.raises(WireError, match="stream ended inside the reply to step 0"):
        read([WELCOME, *parts[:-1]])
    with pytest.raises(WireError, match="first message must be welcome, got part"):
        read(parts)
    with pytest.raises(WireError, match=r"activations_grad.offset: =2000, expected 1000"):
        read([WELCOME, parts[0], parts[2], parts[1], *parts[3:]])
    nan = frame_to_tensor(grad).clone()
    nan[0, 0, 0] = float("nan")
    bad = list(step_download_responses(result, [tensor_to_frame("activations_grad", nan)], 1000))
    spec = [TensorSpec("activations_grad", frozenset({"float32"}), None, require_finite=True)]
    with pytest.raises(WireError, match="activations_grad.data: 1 non-finite"):
        read([WELCOME, *bad])


def test_version_1_layout_of_a_step_is_still_read() -> None:
    """Header, chunks and end as separate messages (and a result followed by
    chunks): the same grammar, unfolded, inside a version-2 stream."""
    from fedsllm.wire.messages import StepEndInfo

    frames = _echo_frames()
    items: list = [HELLO, _header(0, NAMES)]
    items += [c for f in frames for c in frame_to_chunks(f, 1000)]
    items += [StepEndInfo(), *_parts(1)]
    (hello, first, second) = read_uplink(_up_wire(items, "codec"), echo_specs)
    assert first.header.step == 0 and second.header.step == 1
    for upload in (first, second):
        assert bytes(upload.frames["activations"].data) == bytes(frames[0].data)
    grad = tensor_to_frame("activations_grad", torch.randn(2, 8, 64))
    down = [WELCOME, _result(0, ("activations_grad",)), *frame_to_chunks(grad, 1000)]
    (_w, reply) = read_downlink(_down_wire(down, "codec"), _any_specs)
    assert bytes(reply.frames["activations_grad"].data) == bytes(grad.data)
