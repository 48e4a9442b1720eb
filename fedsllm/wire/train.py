"""The Train stream's envelopes: steps as typed records <-> TrainRequest /
TrainResponse message sequences, with the stream grammar enforced.

Uplink (client -> main server): hello once, then per step: header, the
chunks of every tensor the header names, end. Downlink: welcome once, then
per step: result, then the chunks of every tensor the result names
("activations_grad" in TRAIN mode). The builders yield typed items (records
and `Chunk`s whose data are views of the tensors); `read_uplink` /
`read_downlink` turn the received items into `StepUpload` / `StepDownload`
records and raise WireError on any message out of place.

The Train method carries its own (de)serializers (`train_call` on the
client, `TRAIN_SERVER_CODEC` installed by fedsllm.wire.rpc.create_server):
chunks are framed by fedsllm.wire.codec with one copy of the payload, every
other message goes through protobuf. The bytes are the protobuf encoding of
main_server.proto either way, so the generated stubs still interoperate.

Pacing is the caller's: wrap the builder's iterator and sleep per message
(`message_bytes` gives each message's size on the wire).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsllm.errors import WireError
from fedsllm.wire.codec import decode_chunk, encode_chunk, encoded_chunk_bytes
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

    from fedsllm.proto import main_server_pb2, tensor_pb2

UplinkItem = TrainHelloInfo | StepHeaderInfo | StepEndInfo
DownlinkItem = TrainWelcomeInfo | StepResultInfo

TRAIN_METHOD = "/fedsllm.proto.MainServer/Train"
# Field number of `chunk` in the TrainRequest and TrainResponse oneofs.
_CHUNK_FIELD = 3


# ---------------------------------------------------------------- envelopes


def train_request(
    item: UplinkItem | Chunk | tensor_pb2.TensorChunk,
) -> main_server_pb2.TrainRequest:
    """Wrap one uplink item in its TrainRequest envelope (protobuf objects; the
    stream itself encodes chunks without them, see encode_train_request)."""
    from fedsllm.proto import main_server_pb2, tensor_pb2

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
    """Unwrap one received TrainRequest (chunks already decoded by the codec, and
    records of an in-process stream, pass through)."""
    if isinstance(msg, (Chunk, TrainHelloInfo, StepHeaderInfo, StepEndInfo)):
        return msg
    kind = msg.WhichOneof("kind")
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
    """Unwrap one received TrainResponse (chunks and records pass through)."""
    if isinstance(msg, (Chunk, TrainWelcomeInfo, StepResultInfo)):
        return msg
    kind = msg.WhichOneof("kind")
    if kind == "welcome":
        return welcome_from_proto(msg.welcome)
    if kind == "result":
        return step_result_from_proto(msg.result)
    if kind == "chunk":
        return chunk_from_proto(msg.chunk)
    raise WireError("TrainResponse.kind", "no field of the oneof is set")


# ---------------------------------------------------------------- codec


def encode_train_request(item: Any) -> bytes:
    """gRPC request serializer: a Chunk is framed by hand (one copy of its data),
    a record or a TrainRequest goes through protobuf, and bytes (a message
    encoded earlier, by this function) pass as they are."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, Chunk):
        return encode_chunk(_CHUNK_FIELD, item)
    if isinstance(item, (TrainHelloInfo, StepHeaderInfo, StepEndInfo)):
        item = train_request(item)
    return item.SerializeToString()


def decode_train_request(buf: bytes) -> main_server_pb2.TrainRequest | Chunk:
    """gRPC request deserializer: a Chunk viewing `buf`, or a TrainRequest for
    every other kind. Nothing is validated here (a WireError raised inside
    gRPC's deserializer would reach the client as INTERNAL); read_uplink does
    it. Bytes protobuf cannot parse raise, as protobuf's own parser would."""
    chunk = decode_chunk(_CHUNK_FIELD, buf)
    if chunk is not None:
        return chunk
    from fedsllm.proto import main_server_pb2

    return main_server_pb2.TrainRequest.FromString(buf)


def encode_train_response(item: Any) -> bytes:
    """gRPC response serializer (see encode_train_request)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, Chunk):
        return encode_chunk(_CHUNK_FIELD, item)
    if isinstance(item, (TrainWelcomeInfo, StepResultInfo)):
        item = train_response(item)
    return item.SerializeToString()


def decode_train_response(buf: bytes) -> main_server_pb2.TrainResponse | Chunk:
    """gRPC response deserializer (see decode_train_request)."""
    chunk = decode_chunk(_CHUNK_FIELD, buf)
    if chunk is not None:
        return chunk
    from fedsllm.proto import main_server_pb2

    return main_server_pb2.TrainResponse.FromString(buf)


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
) -> Iterator[UplinkItem | Chunk]:
    """header, every frame's chunks (in header order), end: the items a Train
    call made by `train_call` sends (wrap each in train_request for a stub
    with protobuf's serializers)."""
    _check_names("StepHeader.tensor_names", header.tensor_names, frames)
    yield header
    for frame in frames:
        yield from frame_to_chunks(frame, chunk_bytes)
    yield StepEndInfo()


def step_download_responses(
    result: StepResultInfo, frames: Sequence[TensorFrame], chunk_bytes: int
) -> Iterator[DownlinkItem | Chunk]:
    """result, then every frame's chunks (in result order)."""
    _check_names("StepResult.tensor_names", result.tensor_names, frames)
    yield result
    for frame in frames:
        yield from frame_to_chunks(frame, chunk_bytes)


# ---------------------------------------------------------------- readers


@dataclass(frozen=True, slots=True)
class StepUpload:
    """One step's upload as the main server sees it."""

    header: StepHeaderInfo
    frames: dict[str, TensorFrame]
    receive_s: float
    """From the header's arrival to the end marker's, seconds."""

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        # The assembler's buffers are owned by this record alone: no copy.
        return frame_to_tensor(self.frames[name], dtype, copy=False)


@dataclass(frozen=True, slots=True)
class StepDownload:
    """One step's reply as the client sees it."""

    result: StepResultInfo
    frames: dict[str, TensorFrame]
    receive_s: float
    """From the result's arrival to the last chunk's, seconds."""

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return frame_to_tensor(self.frames[name], dtype, copy=False)


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
    return ChunkAssembler(limits=limits, specs={n: by_name[n] for n in names}, buffers=buffers)


def read_uplink(
    requests: Iterable[Any],
    specs: Callable[[StepHeaderInfo], Iterable[TensorSpec]],
    limits: WireLimits | None = None,
) -> Iterator[TrainHelloInfo | StepUpload]:
    """Yield the hello, then one StepUpload per complete step.

    `specs(header)` says which tensors the step may carry and how they must
    look; it is called once per header, so it can depend on the mode.
    WireError on anything out of order or malformed; nothing of a bad step
    is yielded.
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
    for msg in it:
        item = parse_train_request(msg)
        if isinstance(item, StepHeaderInfo):
            if header is not None:
                raise WireError(
                    "TrainRequest.kind",
                    f"header of step {item.step} before the end of step {header.step}",
                )
            started = time.perf_counter()
            assembler = _step_assembler(
                "StepHeader.tensor_names", item.tensor_names, specs(item), limits, buffers
            )
            header = item
        elif isinstance(item, StepEndInfo):
            if header is None or assembler is None:
                raise WireError("TrainRequest.kind", "end without a step header")
            frames = assembler.finish(header.tensor_names)
            yield StepUpload(
                header=header, frames=dict(frames), receive_s=time.perf_counter() - started
            )
            header, assembler = None, None
        elif isinstance(item, TrainHelloInfo):
            raise WireError("TrainRequest.kind", "hello sent twice")
        else:
            if assembler is None:
                raise WireError("TrainRequest.kind", f"chunk of {item.name!r} outside a step")
            assembler.feed(item)
    if header is not None:
        raise WireError("TrainRequest.kind", f"stream ended inside step {header.step}")


def read_downlink(
    responses: Iterable[Any],
    specs: Callable[[StepResultInfo], Iterable[TensorSpec]],
    limits: WireLimits | None = None,
) -> Iterator[TrainWelcomeInfo | StepDownload]:
    """Yield the welcome, then one StepDownload per step once its tensors are in."""
    limits = limits or WireLimits()
    buffers = ReceiveBuffers()
    it = iter(responses)
    first = next(it, None)
    if first is None:
        return
    welcome = parse_train_response(first)
    if not isinstance(welcome, TrainWelcomeInfo):
        raise WireError("TrainResponse.kind", f"first message must be welcome, got {_kind(first)}")
    yield welcome
    result: StepResultInfo | None = None
    assembler: ChunkAssembler | None = None
    started = 0.0
    for msg in it:
        item = parse_train_response(msg)
        if isinstance(item, StepResultInfo):
            if result is not None:
                raise WireError(
                    "TrainResponse.kind",
                    f"result of step {item.step} before the tensors of step {result.step}",
                )
            started = time.perf_counter()
            if not item.tensor_names:
                yield StepDownload(result=item, frames={}, receive_s=0.0)
                continue
            assembler = _step_assembler(
                "StepResult.tensor_names", item.tensor_names, specs(item), limits, buffers
            )
            result = item
        elif isinstance(item, TrainWelcomeInfo):
            raise WireError("TrainResponse.kind", "welcome sent twice")
        else:
            if result is None or assembler is None:
                raise WireError("TrainResponse.kind", f"chunk of {item.name!r} outside a step")
            assembler.feed(item)
            if assembler.in_progress is None and len(assembler.frames) == len(result.tensor_names):
                yield StepDownload(
                    result=result,
                    frames=dict(assembler.frames),
                    receive_s=time.perf_counter() - started,
                )
                result, assembler = None, None
    if result is not None:
        raise WireError(
            "TrainResponse.kind", f"stream ended inside the reply to step {result.step}"
        )
