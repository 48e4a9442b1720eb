"""The Train stream's envelopes: steps as typed records <-> TrainRequest /
TrainResponse message sequences, with the stream grammar enforced.

Uplink (client -> main server): hello once, then per step: header, the
chunks of every tensor the header names, end. Downlink: welcome once, then
per step: result, then the chunks of every tensor the result names
("activations_grad" in TRAIN mode). `read_uplink` / `read_downlink` turn the
raw message iterators into `StepUpload` / `StepDownload` records and raise
WireError on any message out of place; the builders produce the sequences.

Pacing is the caller's: wrap the builder's iterator and sleep per message
(`message_bytes` gives each message's size on the wire).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsllm.errors import WireError
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
    ChunkAssembler,
    TensorFrame,
    TensorSpec,
    WireLimits,
    frame_to_chunks,
    frame_to_tensor,
)

if TYPE_CHECKING:
    import torch

    from fedsllm.proto import main_server_pb2, tensor_pb2

UplinkItem = TrainHelloInfo | StepHeaderInfo | StepEndInfo
DownlinkItem = TrainWelcomeInfo | StepResultInfo


def message_bytes(msg: Any) -> int:
    """Serialized size of a protobuf message, bytes (what a shaper charges)."""
    return int(msg.ByteSize())


# ---------------------------------------------------------------- envelopes


def train_request(item: UplinkItem | tensor_pb2.TensorChunk) -> main_server_pb2.TrainRequest:
    """Wrap one uplink item in its TrainRequest envelope."""
    from fedsllm.proto import main_server_pb2, tensor_pb2

    if isinstance(item, TrainHelloInfo):
        return main_server_pb2.TrainRequest(hello=hello_to_proto(item))
    if isinstance(item, StepHeaderInfo):
        return main_server_pb2.TrainRequest(header=step_header_to_proto(item))
    if isinstance(item, StepEndInfo):
        return main_server_pb2.TrainRequest(end=main_server_pb2.StepEnd())
    if isinstance(item, tensor_pb2.TensorChunk):
        return main_server_pb2.TrainRequest(chunk=item)
    raise TypeError(f"not an uplink item: {type(item).__name__}")


def parse_train_request(msg: main_server_pb2.TrainRequest) -> UplinkItem | tensor_pb2.TensorChunk:
    """Unwrap one TrainRequest; chunks come back as TensorChunk messages."""
    kind = msg.WhichOneof("kind")
    if kind == "hello":
        return hello_from_proto(msg.hello)
    if kind == "header":
        return step_header_from_proto(msg.header)
    if kind == "end":
        return StepEndInfo()
    if kind == "chunk":
        return msg.chunk
    raise WireError("TrainRequest.kind", "no field of the oneof is set")


def train_response(item: DownlinkItem | tensor_pb2.TensorChunk) -> main_server_pb2.TrainResponse:
    """Wrap one downlink item in its TrainResponse envelope."""
    from fedsllm.proto import main_server_pb2, tensor_pb2

    if isinstance(item, TrainWelcomeInfo):
        return main_server_pb2.TrainResponse(welcome=welcome_to_proto(item))
    if isinstance(item, StepResultInfo):
        return main_server_pb2.TrainResponse(result=step_result_to_proto(item))
    if isinstance(item, tensor_pb2.TensorChunk):
        return main_server_pb2.TrainResponse(chunk=item)
    raise TypeError(f"not a downlink item: {type(item).__name__}")


def parse_train_response(
    msg: main_server_pb2.TrainResponse,
) -> DownlinkItem | tensor_pb2.TensorChunk:
    """Unwrap one TrainResponse; chunks come back as TensorChunk messages."""
    kind = msg.WhichOneof("kind")
    if kind == "welcome":
        return welcome_from_proto(msg.welcome)
    if kind == "result":
        return step_result_from_proto(msg.result)
    if kind == "chunk":
        return msg.chunk
    raise WireError("TrainResponse.kind", "no field of the oneof is set")


# ---------------------------------------------------------------- builders


def _check_names(field: str, names: Sequence[str], frames: Sequence[TensorFrame]) -> None:
    got = [f.name for f in frames]
    if list(names) != got:
        raise WireError(field, f"={list(names)} but the frames are {got}")


def step_upload_requests(
    header: StepHeaderInfo, frames: Sequence[TensorFrame], chunk_bytes: int
) -> Iterator[main_server_pb2.TrainRequest]:
    """header, every frame's chunks (in header order), end."""
    from fedsllm.proto import main_server_pb2

    _check_names("StepHeader.tensor_names", header.tensor_names, frames)
    yield train_request(header)
    for frame in frames:
        yield from frame_to_chunks(frame, chunk_bytes, main_server_pb2.TrainRequest)
    yield train_request(StepEndInfo())


def step_download_responses(
    result: StepResultInfo, frames: Sequence[TensorFrame], chunk_bytes: int
) -> Iterator[main_server_pb2.TrainResponse]:
    """result, then every frame's chunks (in result order)."""
    from fedsllm.proto import main_server_pb2

    _check_names("StepResult.tensor_names", result.tensor_names, frames)
    yield train_response(result)
    for frame in frames:
        yield from frame_to_chunks(frame, chunk_bytes, main_server_pb2.TrainResponse)


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
    field: str, names: Sequence[str], specs: Iterable[TensorSpec], limits: WireLimits
) -> ChunkAssembler:
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise WireError(
            field, f"names unexpected tensor(s) {unknown} (accepted: {sorted(by_name)})"
        )
    return ChunkAssembler(limits=limits, specs={n: by_name[n] for n in names})


def read_uplink(
    requests: Iterable[main_server_pb2.TrainRequest],
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
    it = iter(requests)
    first = next(it, None)
    if first is None:
        return
    hello = parse_train_request(first)
    if not isinstance(hello, TrainHelloInfo):
        raise WireError(
            "TrainRequest.kind", f"first message must be hello, got {first.WhichOneof('kind')}"
        )
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
                "StepHeader.tensor_names", item.tensor_names, specs(item), limits
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
    responses: Iterable[main_server_pb2.TrainResponse],
    specs: Callable[[StepResultInfo], Iterable[TensorSpec]],
    limits: WireLimits | None = None,
) -> Iterator[TrainWelcomeInfo | StepDownload]:
    """Yield the welcome, then one StepDownload per step once its tensors are in."""
    limits = limits or WireLimits()
    it = iter(responses)
    first = next(it, None)
    if first is None:
        return
    welcome = parse_train_response(first)
    if not isinstance(welcome, TrainWelcomeInfo):
        raise WireError(
            "TrainResponse.kind", f"first message must be welcome, got {first.WhichOneof('kind')}"
        )
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
                "StepResult.tensor_names", item.tensor_names, specs(item), limits
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
