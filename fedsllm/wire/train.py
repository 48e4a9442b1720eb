"""The Train stream's envelopes: steps as typed records <-> TrainRequest /
TrainResponse message sequences, with the stream grammar enforced.

Wire version 2 (proto/fedsllm/proto/main_server.proto). Uplink (client ->
main server): hello once, then per step one or more `StepPart` messages: the
first carries the step header, each carries consecutive chunks of the
tensors the header names, the last carries the end flag. Downlink: welcome
once, then per step either the result alone (no tensor: EVAL mode) or
`ReplyPart` messages, the first carrying the result, whose chunks make up
every tensor the result names ("activations_grad" in TRAIN mode). The
builders pack a step into as few messages as its largest tensor has chunks
(fedsllm.wire.packing, which keeps that packing and the messages' bytes
around the payloads as a plan per tensor signature); the readers also
accept the version-1 layout (header, chunks and end, or result and chunks,
as separate messages) of a step, which
the main server keeps for a reply on a paced downlink (main_server.service).

The builders yield typed items (records, `StepPart`s / `ReplyPart`s whose
chunks view the tensors); `read_uplink` / `read_downlink` turn the received
items into `StepUpload` / `StepDownload` records and raise WireError on any
message out of place.

The Train method carries its own (de)serializers (`encode_train_request`
and `decode_train_response` on the client, fedsllm.wire.train_client;
`TRAIN_SERVER_CODEC` installed by fedsllm.wire.rpc.create_server):
parts and chunks are framed by fedsllm.wire.codec with one copy of the
payload, a step's header and result by fedsllm.wire.heads, and every other
message goes through protobuf. A received part is a `ReceivedPart`: its
bytes, the layout the codec read or matched in them, whose chunks the
readers copy into their tensors without a record per chunk, and its head's
fields; a reply without tensors is a `ReceivedResult`.
Every received message is decoded (or matched) by the deserializer, so bytes
protobuf cannot parse end the call as gRPC ends it for any failed
deserializer (INTERNAL), whatever their kind.
The bytes are the
protobuf encoding of main_server.proto either way, so the generated stubs
still interoperate (`train_request` / `train_response` wrap any item in its
protobuf envelope).

Pacing is the caller's: wrap the builder's iterator and sleep per message
(`message_bytes` gives each message's size on the wire; for a part it is
known before its payload is copied, and the layout it computes is kept for
the encoder).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedsllm.errors import WireError
from fedsllm.wire.codec import (
    PartLayout,
    Piece,
    decode_chunk,
    decode_part,
    encode_chunk,
    encoded_chunk_bytes,
    envelope_body,
    enveloped,
    join_pieces,
    layout_chunks,
    part_body,
    pieces_bytes,
    varint,
)
from fedsllm.wire.heads import (
    ResultFields,
    parse_step_header,
    parse_step_result,
    serialize_step_header,
    serialize_step_result,
)
from fedsllm.wire.messages import (
    StepEndInfo,
    StepHeaderInfo,
    StepResultInfo,
    TrainHelloInfo,
    TrainWelcomeInfo,
    hello_from_proto,
    hello_to_proto,
    step_header_from_proto,
    step_header_to_proto,
    step_result_from_proto,
    step_result_to_proto,
    welcome_from_proto,
    welcome_to_proto,
)
from fedsllm.wire.packing import Body, step_messages
from fedsllm.wire.tensors import (
    Chunk,
    ChunkAssembler,
    ReceiveBuffers,
    TensorFrame,
    TensorSpec,
    WireLimits,
    chunk_from_proto,
    chunk_to_proto,
    frame_to_chunks,
    frame_to_tensor,
)

if TYPE_CHECKING:
    import grpc
    import torch
    from google.protobuf.message import Message

    from fedsllm.proto import main_server_pb2, tensor_pb2

TRAIN_METHOD = "/fedsllm.proto.MainServer/Train"
# Field numbers in the TrainRequest and TrainResponse oneofs: `chunk`
# (version 1 layout) and `part` (StepPart, ReplyPart).
_CHUNK_FIELD = 3
_REQUEST_PART_FIELD = 5
_RESPONSE_PART_FIELD = 4
_RESULT_FIELD = 2
"""TrainResponse.result's field number."""

# ---------------------------------------------------------------- parts


@dataclass(eq=True, slots=True)
class StepPart:
    """One uplink message of a step (wire version 2): the header on the step's
    first, consecutive chunks, the end flag on its last. The chunks' data are
    views (of the tensors when sending, of the message bytes when received)."""

    chunks: tuple[Chunk, ...] = ()
    header: StepHeaderInfo | None = None
    end: bool = False
    _pieces: list[Piece] | None = field(default=None, init=False, compare=False, repr=False)
    _body: Body | None = field(default=None, init=False, compare=False, repr=False)
    """The chunks and end flag as pieces, when the builder had them from its
    plan (fedsllm.wire.packing); else made from `chunks` and `end`."""

    def pieces(self) -> list[Piece]:
        """The message as byte strings and payload views (computed once)."""
        if self._pieces is None:
            head = None
            if self.header is not None:
                head = serialize_step_header(self.header)
            body = self._body or part_body(self.chunks, self.end)
            self._pieces = enveloped(_REQUEST_PART_FIELD, head, *body)
        return self._pieces


@dataclass(eq=True, slots=True)
class ReplyPart:
    """One downlink message of a reply with tensors (wire version 2): the result
    on the first, consecutive chunks of the tensors it names."""

    chunks: tuple[Chunk, ...] = ()
    result: StepResultInfo | None = None
    _pieces: list[Piece] | None = field(default=None, init=False, compare=False, repr=False)
    _body: Body | None = field(default=None, init=False, compare=False, repr=False)
    """See StepPart._body."""

    def pieces(self) -> list[Piece]:
        """The message as byte strings and payload views (computed once)."""
        if self._pieces is None:
            head = None
            if self.result is not None:
                head = serialize_step_result(self.result)
            body = self._body or part_body(self.chunks, False)
            self._pieces = enveloped(_RESPONSE_PART_FIELD, head, *body)
        return self._pieces


@dataclass(slots=True)
class ReceivedPart:
    """A StepPart or ReplyPart as the deserializer leaves it: the message bytes,
    the layout fedsllm.wire.codec read (or matched) in them, and the head
    (the StepHeader's or StepResult's fields as fedsllm.wire.heads read them,
    not yet validated; None on all but a step's first). The readers feed
    the layout's chunks to their assembler without making a Chunk of each;
    `chunks` makes them for everyone else."""

    layout: PartLayout
    buf: bytes
    base: int
    """Where the layout starts in `buf`."""
    head: Any = None

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(layout_chunks(self.layout, self.buf, self.base))

    @property
    def end(self) -> bool:
        return self.layout.end


@dataclass(slots=True)
class ReceivedResult:
    """A reply without tensors (TrainResponse.result) as the deserializer
    leaves it: the message bytes and the StepResult's fields as
    fedsllm.wire.heads read them, not yet validated."""

    fields: ResultFields | main_server_pb2.StepResult
    buf: bytes


UplinkItem = TrainHelloInfo | StepHeaderInfo | StepEndInfo | StepPart
DownlinkItem = TrainWelcomeInfo | StepResultInfo | ReplyPart


# ---------------------------------------------------------------- envelopes


def _chunks_to_proto(chunks: Sequence[Chunk]) -> list[tensor_pb2.TensorChunk]:
    return [chunk_to_proto(c) for c in chunks]


def train_request(
    item: UplinkItem | Chunk | tensor_pb2.TensorChunk,
) -> main_server_pb2.TrainRequest:
    """Wrap one uplink item in its TrainRequest envelope (protobuf objects; the
    stream itself encodes parts and chunks without them, see
    encode_train_request)."""
    from fedsllm.proto import main_server_pb2, tensor_pb2

    if isinstance(item, StepPart):
        part = main_server_pb2.StepPart(chunks=_chunks_to_proto(item.chunks), end=item.end)
        if item.header is not None:
            part.header.CopyFrom(step_header_to_proto(item.header))
        return main_server_pb2.TrainRequest(part=part)
    if isinstance(item, TrainHelloInfo):
        return main_server_pb2.TrainRequest(hello=hello_to_proto(item))
    if isinstance(item, StepHeaderInfo):
        return main_server_pb2.TrainRequest(header=step_header_to_proto(item))
    if isinstance(item, StepEndInfo):
        return main_server_pb2.TrainRequest(end=main_server_pb2.StepEnd())
    if isinstance(item, Chunk):
        return main_server_pb2.TrainRequest(chunk=chunk_to_proto(item))
    if isinstance(item, tensor_pb2.TensorChunk):
        return main_server_pb2.TrainRequest(chunk=item)
    raise TypeError(f"not an uplink item: {type(item).__name__}")


def parse_train_request(
    msg: main_server_pb2.TrainRequest | UplinkItem | Chunk,
) -> UplinkItem | Chunk:
    """Unwrap one received TrainRequest (parts and chunks already decoded by the
    codec, and records of an in-process stream, pass through; a decoded part's
    header is validated here)."""
    if type(msg) is ReceivedPart:
        header = None if msg.head is None else step_header_from_proto(msg.head)
        return StepPart(msg.chunks, header, msg.end)
    if isinstance(msg, (StepPart, Chunk, TrainHelloInfo, StepHeaderInfo, StepEndInfo)):
        return msg
    kind = msg.WhichOneof("kind")
    if kind == "part":
        part = msg.part
        header = step_header_from_proto(part.header) if part.HasField("header") else None
        return StepPart(tuple(chunk_from_proto(c) for c in part.chunks), header, part.end)
    if kind == "hello":
        return hello_from_proto(msg.hello)
    if kind == "header":
        return step_header_from_proto(msg.header)
    if kind == "end":
        return StepEndInfo()
    if kind == "chunk":
        return chunk_from_proto(msg.chunk)
    raise WireError("TrainRequest.kind", "no field of the oneof is set")


def train_response(
    item: DownlinkItem | Chunk | tensor_pb2.TensorChunk,
) -> main_server_pb2.TrainResponse:
    """Wrap one downlink item in its TrainResponse envelope (protobuf objects)."""
    from fedsllm.proto import main_server_pb2, tensor_pb2

    if isinstance(item, ReplyPart):
        part = main_server_pb2.ReplyPart(chunks=_chunks_to_proto(item.chunks))
        if item.result is not None:
            part.result.CopyFrom(step_result_to_proto(item.result))
        return main_server_pb2.TrainResponse(part=part)
    if isinstance(item, TrainWelcomeInfo):
        return main_server_pb2.TrainResponse(welcome=welcome_to_proto(item))
    if isinstance(item, StepResultInfo):
        return main_server_pb2.TrainResponse(result=step_result_to_proto(item))
    if isinstance(item, Chunk):
        return main_server_pb2.TrainResponse(chunk=chunk_to_proto(item))
    if isinstance(item, tensor_pb2.TensorChunk):
        return main_server_pb2.TrainResponse(chunk=item)
    raise TypeError(f"not a downlink item: {type(item).__name__}")


def parse_train_response(
    msg: main_server_pb2.TrainResponse | DownlinkItem | Chunk,
) -> DownlinkItem | Chunk:
    """Unwrap one received TrainResponse (parts, chunks and records pass
    through; a decoded part's result is validated here)."""
    if type(msg) is ReceivedPart:
        result = None if msg.head is None else step_result_from_proto(msg.head)
        return ReplyPart(msg.chunks, result)
    if type(msg) is ReceivedResult:
        return step_result_from_proto(msg.fields)
    if isinstance(msg, (ReplyPart, Chunk, TrainWelcomeInfo, StepResultInfo)):
        return msg
    kind = msg.WhichOneof("kind")
    if kind == "part":
        part = msg.part
        result = step_result_from_proto(part.result) if part.HasField("result") else None
        return ReplyPart(tuple(chunk_from_proto(c) for c in part.chunks), result)
    if kind == "welcome":
        return welcome_from_proto(msg.welcome)
    if kind == "result":
        return step_result_from_proto(msg.result)
    if kind == "chunk":
        return chunk_from_proto(msg.chunk)
    raise WireError("TrainResponse.kind", "no field of the oneof is set")


# ---------------------------------------------------------------- codec


def encode_train_request(item: Any) -> bytes:
    """gRPC request serializer: a StepPart or a Chunk is framed by hand (one copy
    of its data), a record or a TrainRequest goes through protobuf, and bytes
    (a message encoded earlier, by this function) and a received part (its
    bytes) pass as they are."""
    if type(item) is StepPart:
        return join_pieces(item.pieces())
    if isinstance(item, bytes):
        return item
    if type(item) is ReceivedPart:
        return item.buf
    if isinstance(item, Chunk):
        return encode_chunk(_CHUNK_FIELD, item)
    if isinstance(item, (TrainHelloInfo, StepHeaderInfo, StepEndInfo)):
        item = train_request(item)
    return item.SerializeToString()


def decode_train_request(buf: bytes) -> main_server_pb2.TrainRequest | ReceivedPart | Chunk:
    """gRPC request deserializer: a ReceivedPart (its header's fields read by
    fedsllm.wire.heads) or a Chunk, their data viewing `buf`, or a TrainRequest for every
    other kind. Nothing is validated here (a WireError raised inside gRPC's
    deserializer would reach the client as INTERNAL); read_uplink does it.
    Bytes protobuf cannot parse raise, as protobuf's own parser would."""
    part = decode_part(_REQUEST_PART_FIELD, buf)
    if part is not None:  # the usual message
        head, layout, base = part
        return ReceivedPart(layout, buf, base, None if head is None else parse_step_header(head))
    from fedsllm.proto import main_server_pb2 as pb

    return _decode_other(buf, pb.TrainRequest)


def encode_train_response(item: Any) -> bytes:
    """gRPC response serializer (see encode_train_request)."""
    if type(item) is ReplyPart:
        return join_pieces(item.pieces())
    if isinstance(item, bytes):
        return item
    if type(item) is ReceivedPart or type(item) is ReceivedResult:
        return item.buf
    if isinstance(item, Chunk):
        return encode_chunk(_CHUNK_FIELD, item)
    if type(item) is StepResultInfo:  # a reply without tensors, every EVAL step
        result = serialize_step_result(item)
        return bytes((_RESULT_FIELD << 3 | 2,)) + varint(len(result)) + result
    if isinstance(item, (TrainWelcomeInfo, StepResultInfo)):
        item = train_response(item)
    return item.SerializeToString()


def decode_train_response(
    buf: bytes,
) -> main_server_pb2.TrainResponse | ReceivedPart | ReceivedResult | Chunk:
    """gRPC response deserializer (see decode_train_request); a reply without
    tensors is a ReceivedResult."""
    part = decode_part(_RESPONSE_PART_FIELD, buf)
    if part is not None:  # the usual message
        head, layout, base = part
        return ReceivedPart(layout, buf, base, None if head is None else parse_step_result(head))
    start = envelope_body(_RESULT_FIELD, buf)
    if start >= 0:  # a reply without tensors (EVAL mode): TrainResponse.result alone
        return ReceivedResult(parse_step_result(buf[start:]), buf)
    from fedsllm.proto import main_server_pb2 as pb

    return _decode_other(buf, pb.TrainResponse)


def _decode_other(buf: bytes, envelope: type[Message]) -> Any:
    """The rest of a Train deserializer: a chunk, or the whole message parsed
    as `envelope`."""
    chunk = decode_chunk(_CHUNK_FIELD, buf)
    if chunk is not None:
        return chunk
    return envelope.FromString(buf)


TRAIN_SERVER_CODEC = (decode_train_request, encode_train_response)
"""(request_deserializer, response_serializer) of the Train method on a server."""


def train_call(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    """The Train method of `channel` with the chunk codec (in place of the
    generated stub's protobuf (de)serializers)."""
    return channel.stream_stream(
        TRAIN_METHOD,
        request_serializer=encode_train_request,
        response_deserializer=decode_train_response,
        _registered_method=True,
    )


_KINDS: dict[type, str] = {
    ReceivedPart: "part",
    ReceivedResult: "result",
    StepPart: "part",
    ReplyPart: "part",
    Chunk: "chunk",
    TrainHelloInfo: "hello",
    StepHeaderInfo: "header",
    StepEndInfo: "end",
    TrainWelcomeInfo: "welcome",
    StepResultInfo: "result",
}


def _kind(msg: Any) -> str | None:
    """The oneof field a received message (or record) stands for, for messages."""
    kind = _KINDS.get(type(msg))
    return kind if kind is not None else msg.WhichOneof("kind")


def message_bytes(msg: Any) -> int:
    """Serialized size of one Train message, bytes (what a shaper charges)."""
    if type(msg) is ReceivedPart or type(msg) is ReceivedResult:
        return len(msg.buf)
    if type(msg) is StepPart or type(msg) is ReplyPart:
        return pieces_bytes(msg.pieces())
    if isinstance(msg, bytes):
        return len(msg)
    if isinstance(msg, Chunk):
        return encoded_chunk_bytes(_CHUNK_FIELD, msg)
    if isinstance(msg, (TrainHelloInfo, StepHeaderInfo, StepEndInfo)):
        msg = train_request(msg)
    elif isinstance(msg, (TrainWelcomeInfo, StepResultInfo)):
        msg = train_response(msg)
    return int(msg.ByteSize())


# ---------------------------------------------------------------- builders


def _check_names(field: str, names: Sequence[str], frames: Sequence[TensorFrame]) -> None:
    got = [f.name for f in frames]
    if list(names) != got:
        raise WireError(field, f"={list(names)} but the frames are {got}")


def step_upload_requests(
    header: StepHeaderInfo, frames: Sequence[TensorFrame], chunk_bytes: int
) -> Iterator[StepPart]:
    """The step as StepPart messages (wire version 2): the header on the first,
    the frames' chunks (in header order, packed by packing.pack_chunks), the end flag on
    the last. The items a Train call made by `train_call` sends (wrap each in
    train_request for a stub with protobuf's serializers)."""
    _check_names("StepHeader.tensor_names", header.tensor_names, frames)
    messages = step_messages(frames, chunk_bytes, end=True)
    last = len(messages) - 1
    for i, (chunks, body) in enumerate(messages):
        part = StepPart(chunks, header if i == 0 else None, i == last)
        part._body = body
        yield part


def step_download_responses(
    result: StepResultInfo, frames: Sequence[TensorFrame], chunk_bytes: int, fold: bool = True
) -> Iterator[DownlinkItem | Chunk]:
    """The reply: the result alone when no tensor follows, else ReplyPart
    messages, the result on the first, the frames' chunks (in result order,
    packed by packing.pack_chunks). fold=False keeps the unfolded layout: the result,
    then every chunk as a message of its own (a paced reply: see
    main_server.service)."""
    _check_names("StepResult.tensor_names", result.tensor_names, frames)
    if not frames or not fold:
        yield result
        for frame in frames:
            yield from frame_to_chunks(frame, chunk_bytes)
        return
    for i, (chunks, body) in enumerate(step_messages(frames, chunk_bytes, end=False)):
        part = ReplyPart(chunks, result if i == 0 else None)
        part._body = body
        yield part


# ---------------------------------------------------------------- readers


@dataclass(frozen=True, slots=True)
class StepUpload:
    """One step's upload as the main server sees it."""

    header: StepHeaderInfo
    frames: dict[str, TensorFrame]
    receive_s: float
    """From the header's arrival to the end marker's, seconds."""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """The frames as torch tensors over the same buffers, made by the reader's
    assembler as each tensor started arriving (ChunkAssembler.make_tensors)."""

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        # The assembler's buffers are owned by this record alone: no copy.
        return _received_tensor(self.frames, self.tensors, name, dtype)


@dataclass(frozen=True, slots=True)
class StepDownload:
    """One step's reply as the client sees it."""

    result: StepResultInfo
    frames: dict[str, TensorFrame]
    receive_s: float
    """From the result's arrival to the last chunk's, seconds."""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """As StepUpload.tensors."""

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return _received_tensor(self.frames, self.tensors, name, dtype)


def _received_tensor(
    frames: dict[str, TensorFrame],
    tensors: dict[str, torch.Tensor],
    name: str,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """A received tensor, as `dtype` if given: the one the assembler made (the
    same tensor object on every call: change it in place and every later call
    sees the change), else made from its frame. No copy unless cast (or on a
    big-endian host, where frame_to_tensor byte-swaps)."""
    t = tensors.get(name)
    if t is None:
        return frame_to_tensor(frames[name], dtype, copy=False)
    return t if dtype is None or dtype == t.dtype else t.to(dtype)


def _step_assembler(
    field: str,
    names: Sequence[str],
    specs: Iterable[TensorSpec],
    limits: WireLimits,
    buffers: ReceiveBuffers,
) -> ChunkAssembler:
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise WireError(
            field, f"names unexpected tensor(s) {unknown} (accepted: {sorted(by_name)})"
        )
    return ChunkAssembler(
        limits=limits, specs={n: by_name[n] for n in names}, buffers=buffers, make_tensors=True
    )


def read_uplink(
    requests: Iterable[Any],
    specs: Callable[[StepHeaderInfo], Iterable[TensorSpec]],
    limits: WireLimits | None = None,
) -> Iterator[TrainHelloInfo | StepUpload]:
    """Yield the hello, then one StepUpload per complete step.

    `specs(header)` says which tensors the step may carry and how they must
    look; it is called once per header, so it can depend on the mode.
    WireError on anything out of order or malformed; nothing of a bad step
    is yielded. Steps come as StepPart messages (wire version 2) or in the
    version-1 layout (header, chunks, end as separate messages).
    """
    limits = limits or WireLimits()
    buffers = ReceiveBuffers()
    it = iter(requests)
    first = next(it, None)
    if first is None:
        return
    hello = parse_train_request(first)
    if not isinstance(hello, TrainHelloInfo):
        raise WireError("TrainRequest.kind", f"first message must be hello, got {_kind(first)}")
    yield hello
    header: StepHeaderInfo | None = None
    assembler: ChunkAssembler | None = None
    started = 0.0

    def open_step(item: StepHeaderInfo, field: str) -> ChunkAssembler:
        nonlocal header, started
        if header is not None:
            raise WireError(
                field, f"header of step {item.step} before the end of step {header.step}"
            )
        started = time.perf_counter()
        asm = _step_assembler(
            "StepHeader.tensor_names", item.tensor_names, specs(item), limits, buffers
        )
        header = item
        return asm

    def close_step(field: str) -> StepUpload:
        nonlocal header, assembler
        if header is None or assembler is None:
            raise WireError(field, "end without a step header")
        # The assembler's own dicts: it is dropped here, so nothing else holds them.
        upload = StepUpload(
            header=header,
            frames=assembler.finish(header.tensor_names),
            receive_s=time.perf_counter() - started,
            tensors=assembler.tensors,
        )
        header, assembler = None, None
        return upload

    for msg in it:
        if type(msg) is ReceivedPart:  # the usual message: chunks fed as laid out
            head = None if msg.head is None else step_header_from_proto(msg.head)
            laid, chunks, end = msg.layout.chunks, (), msg.layout.end
            first_name = laid[0][0][0] if laid else None
        else:
            item = parse_train_request(msg)
            if type(item) is not StepPart:  # the version-1 layout
                if isinstance(item, Chunk):
                    if assembler is None:
                        raise WireError(
                            "TrainRequest.kind", f"chunk of {item.name!r} outside a step"
                        )
                    assembler.feed(item)
                elif isinstance(item, StepHeaderInfo):
                    assembler = open_step(item, "TrainRequest.kind")
                elif isinstance(item, StepEndInfo):
                    yield close_step("TrainRequest.kind")
                else:
                    raise WireError("TrainRequest.kind", "hello sent twice")
                continue
            head, laid, chunks, end = item.header, (), item.chunks, item.end
            first_name = chunks[0].name if chunks else None
        if head is not None:
            assembler = open_step(head, "StepPart.end")
        elif assembler is None:
            if first_name is not None:
                raise WireError(
                    "StepPart.header",
                    f"missing: chunk of {first_name!r} outside a step "
                    "(the first message of a step carries its header)",
                )
            if not end:
                raise WireError("StepPart", "carries no header, chunk or end")
        if laid:
            assembler.feed_laid(laid, msg.buf, msg.base)  # type: ignore[union-attr]
        for chunk in chunks:
            assembler.feed(chunk)  # type: ignore[union-attr]
        if end:
            yield close_step("StepPart.end")
    if header is not None:
        raise WireError("TrainRequest.kind", f"stream ended inside step {header.step}")


def read_downlink(
    responses: Iterable[Any],
    specs: Callable[[StepResultInfo], Iterable[TensorSpec]],
    limits: WireLimits | None = None,
) -> Iterator[TrainWelcomeInfo | StepDownload]:
    """Yield the welcome, then one StepDownload per step once its tensors are in
    (ReplyPart messages, wire version 2, or a result followed by chunks): a
    DownlinkReader fed from an iterator of responses."""
    reader = DownlinkReader(specs, limits)
    for msg in responses:
        item = reader.feed(msg)
        if item is not None:
            yield item
    reader.end()


class DownlinkReader:
    """The client's side of the Train stream's downlink, one message at a time:
    `feed` each response as it arrives and get back the welcome (first), a
    StepDownload once a step's reply is complete, or None while one is still
    coming. Driven by read_downlink over a sync call's iterator, and by the
    grpc.aio client (fedsllm.wire.train_client), which awaits each message
    itself. WireError on anything out of order or malformed."""

    def __init__(
        self,
        specs: Callable[[StepResultInfo], Iterable[TensorSpec]],
        limits: WireLimits | None = None,
    ) -> None:
        self._specs = specs
        self._limits = limits or WireLimits()
        self._buffers = ReceiveBuffers()
        self._welcomed = False
        self._result: StepResultInfo | None = None
        self._assembler: ChunkAssembler | None = None
        self._started = 0.0

    def feed(self, msg: Any) -> TrainWelcomeInfo | StepDownload | None:
        if not self._welcomed:
            welcome = parse_train_response(msg)
            if not isinstance(welcome, TrainWelcomeInfo):
                raise WireError(
                    "TrainResponse.kind", f"first message must be welcome, got {_kind(msg)}"
                )
            self._welcomed = True
            return welcome
        result, assembler = self._result, self._assembler
        laid: tuple = ()
        if type(msg) is ReceivedPart:  # the usual message: chunks fed as laid out
            head = None if msg.head is None else step_result_from_proto(msg.head)
            laid, chunks, part = msg.layout.chunks, (), True
            first_name = laid[0][0][0] if laid else None
        else:
            item = parse_train_response(msg)
            part = type(item) is ReplyPart
            if part:
                head, chunks = item.result, item.chunks
            elif isinstance(item, Chunk):
                head, chunks = None, (item,)
            elif isinstance(item, StepResultInfo):
                head, chunks = item, ()
            else:
                raise WireError("TrainResponse.kind", "welcome sent twice")
            first_name = chunks[0].name if chunks else None
        field = "ReplyPart.result" if part else "TrainResponse.kind"
        if head is not None:
            if result is not None:
                raise WireError(
                    field, f"result of step {head.step} before the tensors of step {result.step}"
                )
            self._started = time.perf_counter()
            if not head.tensor_names and not chunks and not laid:
                return StepDownload(result=head, frames={}, receive_s=0.0)
            assembler = _step_assembler(
                "StepResult.tensor_names",
                head.tensor_names,
                self._specs(head),
                self._limits,
                self._buffers,
            )
            result = head
            self._result, self._assembler = result, assembler
        elif result is None or assembler is None:
            raise WireError(
                field,
                f"missing: chunk of {first_name!r} outside a step"
                if part
                else f"chunk of {first_name!r} outside a step",
            )
        if laid:
            assembler.feed_laid(laid, msg.buf, msg.base)
        for chunk in chunks:
            assembler.feed(chunk)
        if assembler.in_progress is None and len(assembler.frames) == len(result.tensor_names):
            self._result, self._assembler = None, None
            return StepDownload(  # the assembler's dicts: it is dropped here
                result=result,
                frames=assembler.frames,
                receive_s=time.perf_counter() - self._started,
                tensors=assembler.tensors,
            )
        return None

    def end(self) -> None:
        """The stream ended: WireError if it ended inside a step's reply."""
        if self._result is not None:
            raise WireError(
                "TrainResponse.kind", f"stream ended inside the reply to step {self._result.step}"
            )
