"""Adapter blobs (safetensors bytes) <-> chunked PushAdapter, PullGlobal and
GetServerAdapter streams, with size limits and contiguity checks.

The blob's contents are opaque here: what keys and shapes a blob must hold
is checked by fedsllm.model.lora.adapter_from_bytes against the model. This
module only guarantees that exactly the announced bytes arrived, in order,
within the size limit, and raises WireError (naming the field and values)
otherwise, before any state is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsllm.errors import WireError

if TYPE_CHECKING:
    from fedsllm.proto import fed_server_pb2, tensor_pb2

DEFAULT_MAX_ADAPTER_BYTES = 256 * 2**20

_record = dataclass(frozen=True, kw_only=True, slots=True)


@_record
class PushHeaderInfo:
    client_id: int
    round: int
    """Round the adapter was trained in."""
    num_samples: int
    """Samples behind the update (FedAvg weight)."""
    total_bytes: int
    """Size of the blob that follows, bytes."""
    attempt: int = 0
    """Which try of this client at this round: the push is keyed by
    (client_id, round, attempt), so a retried push counts once."""


@_record
class GlobalHeaderInfo:
    round: int
    has_adapter: bool
    """False for a round-0 pull before any global adapter exists."""
    total_bytes: int
    """Size of the blob that follows, bytes; 0 without an adapter."""
    finished: bool = False
    """True when the run is over."""


def blob_to_chunks(
    blob: bytes, chunk_bytes: int, envelope: Callable[[], Any] | None = None
) -> Iterator[Any]:
    """Cut a blob into AdapterChunk messages of at most `chunk_bytes` each,
    or into envelopes (a message class with a `chunk` field) holding them,
    built in place to save a copy."""
    from fedsllm.proto import tensor_pb2

    if chunk_bytes <= 0:
        raise WireError("chunk_bytes", f"must be > 0, got {chunk_bytes}")
    if not blob:
        raise WireError("adapter.total_bytes", "=0, an adapter blob cannot be empty")
    view = memoryview(blob).cast("B")
    total = view.nbytes
    for offset in range(0, total, chunk_bytes):
        msg = tensor_pb2.AdapterChunk() if envelope is None else envelope()
        chunk = msg if envelope is None else msg.chunk
        chunk.total_bytes = total
        chunk.offset = offset
        chunk.data = bytes(view[offset : offset + chunk_bytes])
        yield msg


class AdapterAssembler:
    """Rebuilds one blob from AdapterChunk messages, validating each first.

    `total_bytes` is the size announced by a header, or None to take it from
    the first chunk. Every chunk must repeat the same total, start where the
    previous one ended, be non-empty and not run past the total.
    """

    __slots__ = ("_buf", "_filled", "_grow", "_max_bytes", "_total", "_view")

    def __init__(
        self,
        total_bytes: int | None = None,
        max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES,
        *,
        preallocate: bool = True,
    ) -> None:
        self._max_bytes = max_bytes
        self._total: int | None = None
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._filled = 0
        self._grow = not preallocate
        """A server reading an untrusted peer: memory grows with the bytes that
        arrived, never to the announced total up front (a 256 MiB announcement
        followed by 1 byte costs 1 byte)."""
        if total_bytes is not None:
            self._allocate(total_bytes)

    def _allocate(self, total: int) -> None:
        if total <= 0:
            raise WireError("adapter.total_bytes", f"={total}, must be > 0")
        if total > self._max_bytes:
            raise WireError("adapter.total_bytes", f"={total} exceeds the limit {self._max_bytes}")
        self._total = total
        if self._grow:
            self._view.release()  # the buffer is resized as bytes arrive
            return
        self._view.release()
        self._buf = bytearray(total)
        self._view = memoryview(self._buf)

    @property
    def complete(self) -> bool:
        return self._total is not None and self._filled == self._total

    def feed(self, chunk: tensor_pb2.AdapterChunk) -> bool:
        """Add one chunk; True once the blob is complete."""
        if self.complete:
            raise WireError("adapter.offset", f"={chunk.offset}, chunk after the blob was complete")
        if self._total is None:
            self._allocate(chunk.total_bytes)
        total = self._total
        if chunk.total_bytes != total:
            raise WireError(
                "adapter.total_bytes", f"={chunk.total_bytes} in a chunk, expected {total}"
            )
        if chunk.offset != self._filled:
            raise WireError(
                "adapter.offset",
                f"={chunk.offset}, expected {self._filled} "
                "(chunks must be contiguous and in order)",
            )
        data = chunk.data
        if not data:
            raise WireError("adapter.data", f"empty chunk at offset {chunk.offset}")
        end = self._filled + len(data)
        if end > total:
            raise WireError(
                "adapter.data", f"chunk [{chunk.offset}, {end}) runs past total_bytes={total}"
            )
        if self._grow:
            self._buf += data
        else:
            self._view[self._filled : end] = data
        self._filled = end
        return end == total

    def result(self) -> bytes:
        """The whole blob; WireError if bytes are missing."""
        if self._total is None:
            raise WireError("adapter.data", "no chunk received")
        if self._filled != self._total:
            raise WireError(
                "adapter.data", f"incomplete: {self._filled} of {self._total} bytes received"
            )
        self._view.release()
        return bytes(self._buf)  # (grown: the view is empty, the buffer holds it all)


def read_adapter_chunks(
    chunks: Iterable[tensor_pb2.AdapterChunk], max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES
) -> bytes:
    """A whole GetServerAdapter stream -> blob."""
    asm = AdapterAssembler(max_bytes=max_bytes)
    for chunk in chunks:
        asm.feed(chunk)
    return asm.result()


def read_blob_chunks(messages: Iterator[Any], field: str, asm: AdapterAssembler) -> bytes:
    """The chunk messages that follow a stream's header -> blob."""
    for msg in messages:
        if msg.WhichOneof("kind") != "chunk":
            raise WireError(f"{field}.kind", f"expected chunk, got {msg.WhichOneof('kind')}")
        asm.feed(msg.chunk)
    return asm.result()


# ---------------------------------------------------------------- PushAdapter


def push_requests(
    header: PushHeaderInfo, blob: bytes, chunk_bytes: int
) -> Iterator[fed_server_pb2.PushAdapterRequest]:
    """header, then the blob's chunks."""
    from fedsllm.proto import fed_server_pb2

    if header.total_bytes != len(blob):
        raise WireError(
            "PushAdapterHeader.total_bytes",
            f"={header.total_bytes} but the blob has {len(blob)} bytes",
        )
    yield fed_server_pb2.PushAdapterRequest(
        header=fed_server_pb2.PushAdapterHeader(
            client_id=header.client_id,
            round=header.round,
            num_samples=header.num_samples,
            total_bytes=header.total_bytes,
            attempt=header.attempt,
        )
    )
    yield from blob_to_chunks(blob, chunk_bytes, fed_server_pb2.PushAdapterRequest)


def read_push_header(
    msg: fed_server_pb2.PushAdapterRequest, max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES
) -> PushHeaderInfo:
    """Validate the first message of a PushAdapter stream (before reading the blob)."""
    if msg.WhichOneof("kind") != "header":
        raise WireError(
            "PushAdapterRequest.kind", f"first message must be header, got {msg.WhichOneof('kind')}"
        )
    h = msg.header
    if h.num_samples == 0:
        raise WireError("PushAdapterHeader.num_samples", "=0, must be > 0")
    if h.total_bytes == 0 or h.total_bytes > max_bytes:
        raise WireError(
            "PushAdapterHeader.total_bytes", f"={h.total_bytes}, must be in [1, {max_bytes}]"
        )
    return PushHeaderInfo(
        client_id=h.client_id,
        round=h.round,
        num_samples=h.num_samples,
        total_bytes=h.total_bytes,
        attempt=h.attempt,
    )


def read_push(
    requests: Iterable[fed_server_pb2.PushAdapterRequest],
    max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES,
) -> tuple[PushHeaderInfo, bytes]:
    """A whole PushAdapter stream -> (header, blob). WireError on any defect."""
    it = iter(requests)
    first = next(it, None)
    if first is None:
        raise WireError("PushAdapterRequest.kind", "empty stream, expected a header")
    header = read_push_header(first, max_bytes)
    asm = AdapterAssembler(header.total_bytes, max_bytes)
    return header, read_blob_chunks(it, "PushAdapterRequest", asm)


# ---------------------------------------------------------------- PullGlobal


def pull_responses(
    header: GlobalHeaderInfo, blob: bytes | None, chunk_bytes: int
) -> Iterator[fed_server_pb2.PullGlobalResponse]:
    """header, then the blob's chunks (none when there is no adapter)."""
    from fedsllm.proto import fed_server_pb2

    size = len(blob) if blob is not None else 0
    if header.has_adapter != (blob is not None) or header.total_bytes != size:
        raise WireError(
            "PullGlobalHeader",
            f"has_adapter={header.has_adapter}, "
            f"total_bytes={header.total_bytes} disagree with a blob of {size} "
            "bytes",
        )
    yield fed_server_pb2.PullGlobalResponse(
        header=fed_server_pb2.PullGlobalHeader(
            round=header.round,
            has_adapter=header.has_adapter,
            total_bytes=header.total_bytes,
            finished=header.finished,
        )
    )
    if blob is not None:
        yield from blob_to_chunks(blob, chunk_bytes, fed_server_pb2.PullGlobalResponse)


def read_pull(
    responses: Iterable[fed_server_pb2.PullGlobalResponse],
    max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES,
) -> tuple[GlobalHeaderInfo, bytes | None]:
    """A whole PullGlobal stream -> (header, blob or None)."""
    it = iter(responses)
    first = next(it, None)
    if first is None or first.WhichOneof("kind") != "header":
        got = None if first is None else first.WhichOneof("kind")
        raise WireError("PullGlobalResponse.kind", f"first message must be header, got {got}")
    h = first.header
    header = GlobalHeaderInfo(
        round=h.round, has_adapter=h.has_adapter, total_bytes=h.total_bytes, finished=h.finished
    )
    if not header.has_adapter:
        if header.total_bytes != 0:
            raise WireError(
                "PullGlobalHeader.total_bytes",
                f"={header.total_bytes} without an adapter, expected 0",
            )
        extra = next(it, None)
        if extra is not None:
            raise WireError("PullGlobalResponse.kind", "chunk after a header without adapter")
        return header, None
    asm = AdapterAssembler(header.total_bytes, max_bytes)
    return header, read_blob_chunks(it, "PullGlobalResponse", asm)
