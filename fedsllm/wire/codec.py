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

What the fields must hold (dtype, shape against bytes, offsets) is checked
later, by fedsllm.wire.tensors.ChunkAssembler; this module only frames.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsllm.wire.tensors import Buffer, Chunk

# Protobuf wire types and the TensorChunk field numbers this module writes.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_OFFSET_FIELD = 5
_DATA_FIELD = 6
_DATA_TAG = bytes([_DATA_FIELD << 3 | _LEN])
_OFFSET_TAG = bytes([_OFFSET_FIELD << 3 | _VARINT])


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); (-1, end + 1) when the varint runs past `end`."""
    value = 0
    shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return -1, end + 1


@functools.lru_cache(maxsize=64)
def chunk_header(name: str, dtype: str, shape: tuple[int, ...], total_bytes: int) -> bytes:
    """Serialized TensorChunk fields 1-4 (the part every chunk of a tensor repeats)."""
    from fedsllm.proto import tensor_pb2

    return tensor_pb2.TensorChunk(
        name=name, dtype=dtype, shape=shape, total_bytes=total_bytes
    ).SerializeToString()


def _chunk_prefix(envelope_field: int, chunk: Chunk, num_bytes: int) -> bytes:
    header = chunk_header(chunk.name, chunk.dtype, tuple(chunk.shape), chunk.total_bytes)
    offset = _OFFSET_TAG + varint(chunk.offset) if chunk.offset else b""
    data = _DATA_TAG + varint(num_bytes) if num_bytes else b""
    body = len(header) + len(offset) + len(data) + num_bytes
    return b"".join((bytes([envelope_field << 3 | _LEN]), varint(body), header, offset, data))


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
        _, pos = _read_varint(buf, pos, end)
        return pos
    if wire_type == _LEN:
        length, pos = _read_varint(buf, pos, end)
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
    from fedsllm.wire.tensors import Chunk

    total = len(buf)
    if total < 2 or buf[0] != (envelope_field << 3 | _LEN):
        return None
    length, pos = _read_varint(buf, 1, total)
    if length < 0 or pos + length != total:
        return None
    header_parts: list[tuple[int, int]] = []
    offset = 0
    data = (0, 0)
    while pos < total:
        key, value_pos = _read_varint(buf, pos, total)
        if key < 0:
            return None
        field, wire_type = key >> 3, key & 7
        if field == _DATA_FIELD and wire_type == _LEN:
            num_bytes, data_pos = _read_varint(buf, value_pos, total)
            if num_bytes < 0 or data_pos + num_bytes > total:
                return None
            data = (data_pos, data_pos + num_bytes)
            pos = data_pos + num_bytes
        elif field == _OFFSET_FIELD and wire_type == _VARINT:
            offset, pos = _read_varint(buf, value_pos, total)
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
    name, dtype, shape, total_bytes = _parse_header(_join(buf, header_parts))
    return Chunk(
        name=name,
        dtype=dtype,
        shape=shape,
        total_bytes=total_bytes,
        offset=offset,
        data=memoryview(buf)[data[0] : data[1]],
    )


def _join(buf: bytes, parts: Sequence[tuple[int, int]]) -> bytes:
    if len(parts) == 1:
        return bytes(buf[parts[0][0] : parts[0][1]])
    return b"".join(buf[a:b] for a, b in parts)
