"""Tensor chunk messages written and read by hand, byte for byte as protobuf would.

A TensorChunk inside its TrainRequest / TrainResponse envelope is a few
dozen bytes of header followed by the payload. Built through protobuf
objects, the payload was copied three times on the way out (a slice to
bytes, into the message, the serialized string) and three times on the way
in (the parse, reading `.data`, the assembler's buffer), besides gRPC's own
copies. Here the header is serialized by protobuf once per tensor (cached),
and a message is `envelope tag + length + header + offset + data tag +
length + payload`, made by one join: the only copy on the way out. Reading
scans the few top-level fields, takes the offset and the payload itself,
parses the other fields with protobuf (cached: every chunk of a tensor
repeats them), and hands the payload on as a memoryview into the received
bytes: the assembler's write into the tensor's buffer is the only copy on
the way in.

The bytes are exactly what `SerializeToString` writes (fields in number
order, packed shape, zero scalars omitted), so a peer using the generated
stubs reads and writes the same stream, and the reader accepts any valid
protobuf layout (any field order, repeated fields: the last wins). Bytes it
cannot frame (another envelope field, truncated or malformed input) are
handed to protobuf's own parser, which raises as it always did.
proto/fedsllm/proto/tensor.proto documents the layout and its version.

Wire version 2 folds a step into few messages (StepPart / ReplyPart in
main_server.proto): a small control message (the step header or result) and
an end flag around one or more chunks. `part_pieces` lays such a message out
(its chunks and end flag by `part_body`, which the step plans of
fedsllm.wire.packing keep, its envelope and head by `enveloped`)
as a list of byte strings and payload views (joined once, by gRPC's sending
thread, through `join_pieces`; their total length is what a shaper charges,
known before anything is copied), and `decode_part` reads one back into the
control message's bytes and its layout: the chunks (where their payloads lie
in the received bytes) and the end flag, with every byte outside the
payloads. A stream repeats its layouts step after step, so each is kept
(bounded in number and size) and a later message whose bytes around its
payloads, and whose length, equal one is matched against it (a dictionary
lookup by its bytes up to the first payload, and a comparison per further run
of bytes between payloads) instead of read field by field. A head is read
every time: a message is kept whole only when it has none, and after a
leading head only the rest is kept; a part with two heads, which protobuf
merges, is left to protobuf.
The decoded fields depend on nothing else (a payload is skipped by the length
in front of it), so a match decodes exactly as the reading did, and bytes
that match no layout are read, and refused, as before.

What the fields must hold (dtype, shape against bytes, offsets) is checked
later, by fedsllm.wire.tensors.ChunkAssembler; this module only frames.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsllm.wire.tensors import Chunk

if TYPE_CHECKING:
    from fedsllm.wire.tensors import Buffer

# Protobuf wire types and the TensorChunk field numbers this module writes.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_OFFSET_FIELD = 5
_DATA_FIELD = 6
_DATA_TAG = bytes([_DATA_FIELD << 3 | _LEN])
_OFFSET_TAG = bytes([_OFFSET_FIELD << 3 | _VARINT])


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); (-1, end + 1) when the varint runs past `end`,
    is longer than ten bytes, or holds 2**64 or more (protobuf keeps the low
    64 bits of such a one: every hand reader hands it to protobuf instead,
    so it decodes as protobuf decodes it)."""
    if pos < end and buf[pos] < 0x80:
        return buf[pos], pos + 1
    value = 0
    shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value, pos) if value < _VARINT_END else (-1, end + 1)
        shift += 7
    return -1, end + 1


_VARINT_END = 1 << 64


@functools.lru_cache(maxsize=64)
def chunk_header(name: str, dtype: str, shape: tuple[int, ...], total_bytes: int) -> bytes:
    """Serialized TensorChunk fields 1-4 (the part every chunk of a tensor repeats)."""
    from fedsllm.proto import tensor_pb2

    return tensor_pb2.TensorChunk(
        name=name, dtype=dtype, shape=shape, total_bytes=total_bytes
    ).SerializeToString()


_PREFIXES: dict[tuple, bytes] = {}
"""Chunk prefixes made so far: a stream sends the same tensors' chunks at the
same offsets step after step, so each is built once (bounded: cleared when
full, as a peer's odd shapes could otherwise grow it)."""
_MAX_PREFIXES = 4096


def _chunk_prefix(envelope_field: int, chunk: Chunk, num_bytes: int) -> bytes:
    """Everything of the enveloped chunk before its data: envelope tag and
    length, fields 1-4, the offset, the data's tag and length."""
    shape = tuple(chunk.shape)
    key = (
        envelope_field,
        chunk.name,
        chunk.dtype,
        shape,
        chunk.total_bytes,
        chunk.offset,
        num_bytes,
    )
    prefix = _PREFIXES.get(key)
    if prefix is not None:
        return prefix
    header = chunk_header(chunk.name, chunk.dtype, shape, chunk.total_bytes)
    offset = _OFFSET_TAG + varint(chunk.offset) if chunk.offset else b""
    data = _DATA_TAG + varint(num_bytes) if num_bytes else b""
    body = len(header) + len(offset) + len(data) + num_bytes
    prefix = b"".join((bytes([envelope_field << 3 | _LEN]), varint(body), header, offset, data))
    if len(_PREFIXES) >= _MAX_PREFIXES:
        _PREFIXES.clear()
    _PREFIXES[key] = prefix
    return prefix


def _bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def encode_chunk(envelope_field: int, chunk: Chunk) -> bytes:
    """The serialized envelope whose field `envelope_field` is this chunk."""
    data = _bytes_view(chunk.data)
    prefix = _chunk_prefix(envelope_field, chunk, data.nbytes)
    return b"".join((prefix, data))


def encoded_chunk_bytes(envelope_field: int, chunk: Chunk) -> int:
    """len(encode_chunk(...)) without building it (what a link shaper charges)."""
    num_bytes = memoryview(chunk.data).nbytes
    return len(_chunk_prefix(envelope_field, chunk, num_bytes)) + num_bytes


def _skip(buf: bytes, pos: int, wire_type: int, end: int) -> int:
    """Position after one field value; end + 1 when malformed or past `end`."""
    if wire_type == _VARINT:
        _, pos = read_varint(buf, pos, end)
        return pos
    if wire_type == _LEN:
        length, pos = read_varint(buf, pos, end)
        return end + 1 if length < 0 else pos + length
    if wire_type == _I64:
        return pos + 8
    if wire_type == _I32:
        return pos + 4
    return end + 1  # groups: never written by proto3, left to protobuf


# Headers longer than this (a peer's oversized name, say) are parsed every
# time rather than kept in the cache.
_MAX_CACHED_HEADER_BYTES = 1024


def _parse_header(header: bytes) -> tuple[str, str, tuple[int, ...], int]:
    """(name, dtype, shape, total_bytes) from serialized TensorChunk fields other
    than the offset and the data."""
    if len(header) <= _MAX_CACHED_HEADER_BYTES:
        return _parse_header_cached(header)
    return _parse_header_uncached(header)


def _parse_header_uncached(header: bytes) -> tuple[str, str, tuple[int, ...], int]:
    from fedsllm.proto import tensor_pb2

    msg = tensor_pb2.TensorChunk.FromString(header)
    return msg.name, msg.dtype, tuple(msg.shape), msg.total_bytes


_parse_header_cached = functools.lru_cache(maxsize=64)(_parse_header_uncached)


def decode_chunk(envelope_field: int, buf: bytes) -> Chunk | None:
    """The chunk of an envelope whose only field is `envelope_field`, its data a
    view into `buf`; None when `buf` is anything else (the caller parses it
    with protobuf, which also reports malformed bytes).

    The data (field 6) and the offset (field 5) are read here; every other
    field goes to protobuf's parser, cached by its bytes, since all chunks of
    a tensor repeat them. As in protobuf, the last occurrence of a field wins.
    """
    pos = envelope_body(envelope_field, buf)
    if pos < 0:
        return None
    fields = _chunk_fields(buf, pos, len(buf))
    if fields is None:
        return None
    *head, start, stop = fields
    return Chunk(*head, memoryview(buf)[start:stop])  # type: ignore[call-arg]


def envelope_body(envelope_field: int, buf: bytes) -> int:
    """Where the body of `buf`'s only field, `envelope_field` (length-delimited),
    begins; -1 when `buf` is not exactly that one field (an empty body
    included: `buf` is then its key and a zero length)."""
    total = len(buf)
    if total < 2 or buf[0] != (envelope_field << 3 | _LEN):
        return -1
    length, pos = read_varint(buf, 1, total)
    if length < 0 or pos + length != total:
        return -1
    return pos


# The header fields (1-4) of the tensors seen last, as they were serialized
# in front of the offset and the data: every chunk of a tensor repeats them,
# so a chunk that starts with one of them is read with a prefix comparison and
# two varints.
_HINTS: list[tuple[bytes, tuple[str, str, tuple[int, ...], int]]] = []
"""(serialized header, its parsed fields), newest first."""
_MAX_HINTS = 4


def _decode_hinted(buf: bytes, pos: int, total: int) -> _ChunkFields | None:
    """The chunk in buf[pos:total] when it is one of the _HINTS headers followed by
    only an offset and the data, else None (the full scan decides)."""
    for header, fields in _HINTS:
        if not buf.startswith(header, pos):
            continue
        p = pos + len(header)
        offset = 0
        if p < total and buf[p] == _OFFSET_KEY:
            offset, p = read_varint(buf, p + 1, total)
        if p >= total or buf[p] != _DATA_KEY:
            return None
        num_bytes, start = read_varint(buf, p + 1, total)
        if offset < 0 or start + num_bytes != total:
            return None
        return (*fields, offset, start, total)
    return None


_OFFSET_KEY = _OFFSET_TAG[0]
_DATA_KEY = _DATA_TAG[0]


_ChunkFields = tuple[str, str, tuple[int, ...], int, int, int, int]
"""A decoded chunk: name, dtype, shape, total_bytes, offset, and where its data
start and stop in the message."""


def _chunk_fields(buf: bytes, pos: int, total: int) -> _ChunkFields | None:
    """The fields of the TensorChunk serialized in buf[pos:total], or None when
    those bytes are not a chunk this reader frames."""
    if _HINTS:
        fields = _decode_hinted(buf, pos, total)
        if fields is not None:
            return fields
    start = pos
    header_parts: list[tuple[int, int]] = []
    offset = 0
    data = (0, 0)
    while pos < total:
        key, value_pos = read_varint(buf, pos, total)
        if key < 0:
            return None
        field, wire_type = key >> 3, key & 7
        if field == 0:  # not a field number: protobuf refuses the message
            return None
        if field == _DATA_FIELD and wire_type == _LEN:
            num_bytes, data_pos = read_varint(buf, value_pos, total)
            if num_bytes < 0 or data_pos + num_bytes > total:
                return None
            data = (data_pos, data_pos + num_bytes)
            pos = data_pos + num_bytes
        elif field == _OFFSET_FIELD and wire_type == _VARINT:
            offset, pos = read_varint(buf, value_pos, total)
            if offset < 0:
                return None
        else:
            after = _skip(buf, value_pos, wire_type, total)
            if after > total:
                return None
            if header_parts and header_parts[-1][1] == pos:
                header_parts[-1] = (header_parts[-1][0], after)
            else:
                header_parts.append((pos, after))
            pos = after
    header = _join(buf, header_parts)
    name, dtype, shape, total_bytes = _parse_header(header)
    if (
        len(header_parts) == 1
        and header_parts[0][0] == start
        and len(header) <= _MAX_CACHED_HEADER_BYTES
        and all(header != known for known, _ in _HINTS)
    ):
        # The usual layout (header fields first): later chunks take the fast path.
        _HINTS.insert(0, (header, (name, dtype, shape, total_bytes)))
        del _HINTS[_MAX_HINTS:]
    return name, dtype, shape, total_bytes, offset, data[0], data[1]


# ---------------------------------------------------------------- parts (wire version 2)

# StepPart / ReplyPart field numbers: the control message (header or result),
# the chunks, the end flag (StepPart only).
PART_HEAD_FIELD = 1
PART_CHUNKS_FIELD = 2
PART_END_FIELD = 3
_END_TRUE = bytes([PART_END_FIELD << 3 | _VARINT, 1])

Piece = bytes | memoryview


def part_pieces(
    envelope_field: int, head: bytes | None, chunks: Sequence[Chunk], end: bool
) -> list[Piece]:
    """The envelope whose field `envelope_field` is a part message with `head`
    (a serialized StepHeader / StepResult, possibly b""; None = none), `chunks`
    and `end`,
    as pieces: byte strings and the chunks' data views, in wire order. Nothing
    of the payloads is copied here."""
    return enveloped(envelope_field, head, *part_body(chunks, end))


def part_body(chunks: Sequence[Chunk], end: bool) -> tuple[list[Piece], int]:
    """The part message's chunks and end flag as pieces (a byte string before
    each payload view, and one after the last when there is an end flag), and
    their length: everything of the message but its envelope and head, which
    `enveloped` adds. A step's layout repeats step after step, so the byte
    strings can be kept and only the views and the head changed
    (fedsllm.wire.packing)."""
    pieces: list[Piece] = []
    small = b""
    body = 0
    for chunk in chunks:
        data = _bytes_view(chunk.data)
        prefix = _chunk_prefix(PART_CHUNKS_FIELD, chunk, data.nbytes)
        body += len(prefix) + data.nbytes
        small += prefix
        if data.nbytes:
            pieces.append(small)
            pieces.append(data)
            small = b""
    if end:
        small += _END_TRUE
        body += len(_END_TRUE)
    if small:
        pieces.append(small)
    return pieces, body


def enveloped(
    envelope_field: int, head: bytes | None, body: Sequence[Piece], body_bytes: int
) -> list[Piece]:
    """The pieces of the envelope whose field `envelope_field` is a part message
    with `head` (None = none) followed by `body` (part_body's pieces, of
    `body_bytes` bytes). The envelope and the head join the first byte string."""
    lead = b""
    if head is not None:
        lead = bytes([PART_HEAD_FIELD << 3 | _LEN]) + varint(len(head)) + head
    lead = bytes([envelope_field << 3 | _LEN]) + varint(body_bytes + len(lead)) + lead
    if body and isinstance(body[0], bytes):
        return [lead + body[0], *body[1:]]
    return [lead, *body]


def pieces_bytes(pieces: Sequence[Piece]) -> int:
    """Length of the message `pieces` make."""
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in pieces)


def join_pieces(pieces: Sequence[Piece]) -> bytes:
    """The message bytes: each payload copied once."""
    return b"".join(pieces)


ChunkKey = tuple[str, str, tuple[int, ...], int]
"""What every chunk of a tensor repeats: name, dtype, shape, total_bytes."""
LaidChunk = tuple[ChunkKey, int, int, int]
"""A chunk of a part layout: its key, its offset, and where its data start and
stop, counted from the layout's start."""


@dataclass(frozen=True, slots=True)
class PartLayout:
    """What decode_part made of a part message from where the layout starts
    (the message's first byte, or the byte after its leading head) to its
    end: the bytes outside the chunks' payloads, and what they said. The
    decoded fields depend on those bytes alone (a payload is skipped by the
    length in front of it), so a later message with the same bytes around
    payloads of the same sizes decodes to the same chunks, head and end
    without reading its fields again."""

    fixed: tuple[tuple[int, bytes], ...] | None
    """(position from the layout's start, bytes): everything but the payloads,
    the first at 0; None for a layout that is not kept (see _keep_layout)."""
    chunks: tuple[LaidChunk, ...]
    head: tuple[int, int] | None
    """A head field inside the layout (a message has one head at most here)."""
    end: bool


_Index = dict[int, dict[int, dict[bytes, PartLayout]]]
"""Layouts by the length they cover, the length of their first run of fixed
bytes, and those bytes: a message is looked up with one slice per first-run
length (one, usually), whatever the number of layouts of its length (a
tensor of many chunks has as many, differing only in the offset)."""
_MESSAGES: dict[int, _Index] = {}
"""Layouts of whole part messages with no head field, by envelope field. A
stream sends the same layouts step after step, so every part message but a
step's first is matched byte for byte against one of these instead of
decoded."""
_TAILS: dict[int, _Index] = {}
"""Layouts of what follows a leading head (a step's first message), the same way."""
_MAX_LAYOUTS = 2048
"""Layouts kept at most, all tables together (cleared when full, so a peer's
odd layouts cannot grow them): a stream keeps one per message of a step, so
a 512 MiB tensor in 256 KiB chunks fits."""
_MAX_FIRST_RUNS = 8
"""Lengths of first runs kept per layout length, so a lookup slices at most this often."""
_MAX_LAYOUT_CHUNKS = 8
_MAX_LAYOUT_FIXED_BYTES = 1024
"""A layout with more chunks or more bytes outside its payloads than these
(unknown fields, many tiny tensors) is decoded every time rather than kept:
a kept layout costs a few kilobytes at most, all of them together about
13 MB at worst (2048 hostile layouts of 8 chunks, measured with tracemalloc)."""
_layout_count = 0
_HEAD_KEY = PART_HEAD_FIELD << 3 | _LEN


def decode_part(envelope_field: int, buf: bytes) -> tuple[bytes | None, PartLayout, int] | None:
    """(head bytes or None, layout, where the layout starts in `buf`) of an
    envelope whose only field is the part message `envelope_field`; None when
    `buf` is anything else, malformed, or has two heads (which protobuf
    merges): the caller hands it to protobuf. As in protobuf, unknown fields
    are skipped and the last end wins. `layout_chunks` gives the chunks.

    A message without a head field is laid out whole (from 0); after a
    leading head (a step's header or result, which changes every step) only
    the rest is, so the next step's first message matches it. Either is
    matched against the layouts decoded before (a whole one first of all,
    before any field is read: the usual message is one its stream sent
    before), and decoded field by field only when none matches."""
    total = len(buf)
    whole = _MESSAGES.get(envelope_field)
    if whole is not None:
        layout = _match(whole, buf, 0)
        if layout is not None:
            return None, layout, 0
    pos = envelope_body(envelope_field, buf)
    if pos < 0:
        return None
    head: tuple[int, int] | None = None
    base = 0
    tables = _MESSAGES
    if pos < total and buf[pos] == _HEAD_KEY:
        length, start = read_varint(buf, pos + 1, total)
        if length < 0 or start + length > total:
            return None
        head = (start, start + length)
        base = pos = start + length
        tables = _TAILS
        layout = _match(_TAILS.get(envelope_field, {}), buf, base)
    else:  # no leading head, and not a whole message seen before
        layout = None
    if layout is None:
        layout = _decode_layout(buf, base, pos, total, head is not None)
        if layout is None:
            return None
        if layout.fixed is not None:
            _keep_layout(tables.setdefault(envelope_field, {}), total - base, layout)
    if layout.head is not None:
        head = (base + layout.head[0], base + layout.head[1])
    return (None if head is None else bytes(buf[head[0] : head[1]])), layout, base


def layout_chunks(layout: PartLayout, buf: bytes, base: int) -> list[Chunk]:
    """The chunks of a decoded part (decode_part), their data viewing `buf`."""
    view = memoryview(buf)
    return [Chunk(*key, offset, view[base + a : base + b]) for key, offset, a, b in layout.chunks]


def _match(index: _Index, buf: bytes, base: int) -> PartLayout | None:
    by_first = index.get(len(buf) - base)
    if by_first is None:
        return None
    # tuple(): taken in one step, as another stream's deserializer may add a length.
    for first, by_bytes in tuple(by_first.items()):
        layout = by_bytes.get(buf[base : base + first])
        if layout is not None:
            for at, piece in layout.fixed[1:]:  # type: ignore[index]
                if not buf.startswith(piece, base + at):
                    break
            else:
                return layout
    return None


def _decode_layout(
    buf: bytes, base: int, pos: int, total: int, has_head: bool
) -> PartLayout | None:
    """Decode the part fields in buf[pos:total] field by field, laid out from
    `base` (everything from there is the layout's); None when malformed or
    when it holds a head and `has_head` (a leading one) or a second head."""
    head: tuple[int, int] | None = None
    chunks: list[LaidChunk] = []
    end = False
    payload = 0
    while pos < total:
        key = buf[pos]
        if key < 0x80:  # a one-byte key, as every field here is written: no call
            value_pos = pos + 1
        else:
            key, value_pos = read_varint(buf, pos, total)
            if key < 0:
                return None
        field, wire_type = key >> 3, key & 7
        if field == 0:  # not a field number: protobuf refuses the message
            return None
        if wire_type == _LEN and field in (PART_CHUNKS_FIELD, PART_HEAD_FIELD):
            length, start = read_varint(buf, value_pos, total)
            if length < 0 or start + length > total:
                return None
            pos = start + length
            if field == PART_HEAD_FIELD:
                if has_head or head is not None:
                    return None  # protobuf merges repeated heads: left to it
                head = (start - base, pos - base)
                continue
            fields = _chunk_fields(buf, start, pos)
            if fields is None:
                return None
            name, dtype, shape, size, offset, a, b = fields
            a, b = (a - base, b - base) if b > a else (0, 0)
            chunks.append(((name, dtype, shape, size), offset, a, b))
            payload += b - a
        elif field == PART_END_FIELD and wire_type == _VARINT:
            value, pos = read_varint(buf, value_pos, total)
            if value < 0:
                return None
            end = value != 0
        else:
            pos = _skip(buf, value_pos, wire_type, total)
            if pos > total:
                return None
    if (
        (head is not None and not has_head)  # a whole message's head would be lost
        or len(chunks) > _MAX_LAYOUT_CHUNKS
        or total - base - payload > _MAX_LAYOUT_FIXED_BYTES
    ):
        return PartLayout(None, tuple(chunks), head, end)
    fixed: list[tuple[int, bytes]] = []
    at = 0
    for _, _, a, b in chunks:
        if b > a:
            fixed.append((at, bytes(buf[base + at : base + a])))
            at = b
    if total - base > at or not fixed:
        fixed.append((at, bytes(buf[base + at : total])))
    return PartLayout(tuple(fixed), tuple(chunks), head, end)


def _keep_layout(index: _Index, length: int, layout: PartLayout) -> None:
    global _layout_count
    first = layout.fixed[0][1]  # type: ignore[index]
    by_first = index.setdefault(length, {})
    if len(first) not in by_first and len(by_first) >= _MAX_FIRST_RUNS:
        return
    if _layout_count >= _MAX_LAYOUTS:
        for tables in (_MESSAGES, _TAILS):
            for known in list(tables.values()):  # list(): one step, while others may add
                known.clear()
        _layout_count = 0
        by_first = index.setdefault(length, {})
    by_bytes = by_first.setdefault(len(first), {})
    if first not in by_bytes:
        _layout_count += 1
    by_bytes[first] = layout


def _join(buf: bytes, parts: Sequence[tuple[int, int]]) -> bytes:
    if len(parts) == 1:
        return bytes(buf[parts[0][0] : parts[0][1]])
    return b"".join(buf[a:b] for a, b in parts)
