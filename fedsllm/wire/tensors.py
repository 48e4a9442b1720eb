"""Tensors <-> raw little-endian buffers <-> streams of TensorChunk messages.

`TensorFrame` is the typed form of one tensor on the wire (name, dtype,
shape, bytes). `tensor_to_frame` / `frame_to_tensor` convert to and from
torch; `frame_to_chunks` cuts a frame into `TensorChunk` messages and
`ChunkAssembler` puts chunks back together, validating every field before
it copies a byte, so a servicer can reject bad input without touching state.
Nothing is pickled: the buffer is the tensor's elements in C order,
little-endian, and bfloat16 travels as its 16-bit patterns.

Pacing, retries and what the tensors mean are left to the callers (the link
shaper and the role loops); the stream envelopes of the Train RPC live in
fedsllm.wire.train.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsllm.errors import WireError

if TYPE_CHECKING:
    import torch

    from fedsllm.proto import tensor_pb2

# Bytes per element of every dtype allowed on the wire.
DTYPE_ITEMSIZE: Mapping[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "bool": 1,
    "uint8": 1,
}
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16"})
MAX_NDIM = 8
DEFAULT_MAX_TENSOR_BYTES = 512 * 2**20

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class TensorFrame:
    """One tensor as it travels: `data` holds prod(shape) * itemsize bytes.

    `data` may share memory with the tensor it came from (tensor_to_frame
    does not copy when no cast is needed); take `bytes(frame.data)` to own it.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: Buffer

    @property
    def num_bytes(self) -> int:
        return memoryview(self.data).nbytes


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a receiver accepts for one named tensor.

    `shape` entries: an int (that exact size), a str (a symbol such as "B":
    bound by the first tensor that uses it, every later use must match), or
    None (any positive size). `shape=None` accepts any rank.
    """

    name: str
    dtypes: frozenset[str]
    shape: tuple[int | str | None, ...] | None = None
    require_finite: bool = False


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Receiver-side bounds applied to every tensor before it is buffered."""

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    """Largest single tensor accepted, bytes."""
    max_ndim: int = MAX_NDIM
    """Largest rank accepted."""


# ---------------------------------------------------------------- torch side


@functools.cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    """Wire name -> torch dtype, built once (torch is imported lazily)."""
    import torch

    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "bool": torch.bool,
        "uint8": torch.uint8,
    }


def _torch_dtype(name: str) -> torch.dtype:
    return _torch_dtypes()[name]


def _check_allowed(field: str, name: str) -> str:
    """`name` if it is a wire dtype, else WireError naming `field`."""
    if name not in DTYPE_ITEMSIZE:
        raise WireError(
            field, f"{name} is not allowed on the wire (allowed: {', '.join(DTYPE_ITEMSIZE)})"
        )
    return name


def _byteswap(data: Buffer, itemsize: int) -> bytes:
    """Reverse the bytes of every element; only needed on big-endian hosts."""
    return np.frombuffer(data, dtype=f"u{itemsize}").byteswap().tobytes()


def tensor_to_frame(name: str, tensor: torch.Tensor, wire_dtype: str | None = None) -> TensorFrame:
    """Encode a tensor (any device) as a frame, cast to `wire_dtype` if given.

    Rejects empty tensors and dtypes outside the allow-list, so a sender fails
    at the source rather than the receiver failing later.
    """
    import torch

    t = tensor.detach()
    if wire_dtype is not None:
        t = t.to(dtype=_torch_dtype(_check_allowed(f"{name}.dtype", wire_dtype)))
    dtype = _check_allowed(f"{name}.dtype", str(t.dtype).removeprefix("torch."))
    if t.numel() == 0:
        raise WireError(f"{name}.shape", f"empty tensor {tuple(t.shape)} cannot be sent")
    t = t.to(device="cpu").contiguous()
    flat = t.reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    data: Buffer = memoryview(raw.numpy()).cast("B")
    if sys.byteorder == "big" and DTYPE_ITEMSIZE[dtype] > 1:  # pragma: no cover - x86/arm are LE
        data = _byteswap(data, DTYPE_ITEMSIZE[dtype])
    return TensorFrame(name=name, dtype=dtype, shape=tuple(int(s) for s in t.shape), data=data)


def frame_to_tensor(
    frame: TensorFrame, dtype: torch.dtype | None = None, *, copy: bool = True
) -> torch.Tensor:
    """Decode a frame into a CPU tensor of its shape, cast to `dtype` if given.

    With copy=True (the default) the result owns its memory and is writable.
    copy=False wraps a writable buffer (as ChunkAssembler produces) without
    copying; use it only when nothing else holds that buffer.
    """
    import torch

    _validate_header(
        frame.name,
        frame.dtype,
        frame.shape,
        frame.num_bytes,
        WireLimits(max_tensor_bytes=sys.maxsize),
    )
    data = frame.data
    if sys.byteorder == "big" and DTYPE_ITEMSIZE[frame.dtype] > 1:  # pragma: no cover
        data = bytearray(_byteswap(data, DTYPE_ITEMSIZE[frame.dtype]))
    elif copy or memoryview(data).readonly:
        data = bytearray(data)
    t = torch.frombuffer(data, dtype=_torch_dtype(frame.dtype)).reshape(frame.shape)
    if dtype is not None and dtype != t.dtype:
        t = t.to(dtype)
    return t


# ---------------------------------------------------------------- chunks


def frame_to_chunks(
    frame: TensorFrame, chunk_bytes: int, envelope: Callable[[], Any] | None = None
) -> Iterator[Any]:
    """Cut a frame into TensorChunk messages of at most `chunk_bytes` data each.

    Every chunk repeats name, dtype, shape and total_bytes (a few bytes) so
    each one can be checked on its own. With `envelope` (a message class
    with a `chunk` field, e.g. TrainRequest), the chunk is built in place
    inside a fresh envelope and the envelopes are yielded: wrapping a
    finished chunk would copy its payload once more.
    """
    from fedsllm.proto import tensor_pb2

    if chunk_bytes <= 0:
        raise WireError("chunk_bytes", f"must be > 0, got {chunk_bytes}")
    view = memoryview(frame.data).cast("B")
    total = view.nbytes
    shape = list(frame.shape)
    for offset in range(0, total, chunk_bytes):
        if envelope is None:
            msg = tensor_pb2.TensorChunk()
            chunk = msg
        else:
            msg = envelope()
            chunk = msg.chunk
        chunk.name = frame.name
        chunk.dtype = frame.dtype
        chunk.shape.extend(shape)
        chunk.total_bytes = total
        chunk.offset = offset
        chunk.data = bytes(view[offset : offset + chunk_bytes])
        yield msg


def _validate_header(
    name: str, dtype: str, shape: Sequence[int], total_bytes: int, limits: WireLimits
) -> int:
    """Check dtype, shape and size of one tensor; returns its itemsize."""
    itemsize = DTYPE_ITEMSIZE.get(dtype)
    if itemsize is None:
        raise WireError(
            f"{name}.dtype", f"{dtype!r} is not allowed (allowed: {', '.join(DTYPE_ITEMSIZE)})"
        )
    if len(shape) > limits.max_ndim:
        raise WireError(f"{name}.shape", f"rank {len(shape)} exceeds the limit {limits.max_ndim}")
    for i, dim in enumerate(shape):
        if dim <= 0:
            raise WireError(f"{name}.shape[{i}]", f"={dim}, every dimension must be > 0")
    expected = math.prod(shape) * itemsize
    if expected > limits.max_tensor_bytes:
        raise WireError(
            f"{name}.total_bytes",
            f"{expected} bytes for shape "
            f"{tuple(shape)} {dtype} exceeds the limit {limits.max_tensor_bytes}",
        )
    if total_bytes != expected:
        raise WireError(
            f"{name}.total_bytes",
            f"={total_bytes}, but shape {tuple(shape)} of {dtype} needs {expected}",
        )
    return itemsize


def check_finite(frame: TensorFrame) -> None:
    """WireError when a float frame holds NaN or Inf (an update that would
    poison the shared model)."""
    if frame.dtype not in FLOAT_DTYPES:
        return
    import torch

    t = frame_to_tensor(frame, copy=False).reshape(-1)
    # Fast path: any NaN or Inf makes the sum non-finite, so a finite sum
    # proves every element finite (torch.isfinite over the whole tensor is
    # about 30x slower here). A sum that overflows falls through to the
    # exact check, which raises only for a real NaN or Inf.
    if bool(torch.isfinite(t.sum())):
        return
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).nonzero()[0, 0])
        raise WireError(
            f"{frame.name}.data",
            f"{bad} non-finite value(s), first at flat index {first} ({float(t[first])})",
        )


@dataclass(slots=True)
class _Partial:
    name: str
    dtype: str
    shape: tuple[int, ...]
    total: int
    buf: memoryview
    filled: int = 0


@dataclass(slots=True)
class ChunkAssembler:
    """Rebuilds tensors from a sequence of TensorChunk messages.

    Feed chunks in order; `feed` returns the TensorFrame when a tensor's last
    chunk arrives, else None. Every check runs before the chunk's bytes are
    copied: the name is expected and not yet received, dtype and shape match
    the spec (symbols bind across tensors), total_bytes agrees with the shape
    and the size limit, offsets are contiguous, nothing runs past the total,
    and no other tensor starts before the current one completes. Any
    violation raises WireError naming the field and the values.

    `specs=None` accepts any name with any allowed dtype and shape.
    """

    limits: WireLimits = field(default_factory=WireLimits)
    specs: Mapping[str, TensorSpec] | None = None
    frames: dict[str, TensorFrame] = field(default_factory=dict)
    bindings: dict[str, tuple[int, str]] = field(default_factory=dict)
    _current: _Partial | None = None

    @classmethod
    def for_specs(
        cls, specs: Iterable[TensorSpec], limits: WireLimits | None = None
    ) -> ChunkAssembler:
        return cls(limits=limits or WireLimits(), specs={s.name: s for s in specs})

    @property
    def in_progress(self) -> str | None:
        """Name of the tensor whose chunks are still arriving, if any."""
        return self._current.name if self._current else None

    def feed(self, chunk: tensor_pb2.TensorChunk) -> TensorFrame | None:
        """Validate and buffer one chunk; the finished frame when it was the last."""
        cur = self._current
        if cur is None:
            cur = self._start(chunk)
        else:
            self._check_continuation(cur, chunk)
        data = chunk.data
        n = len(data)
        if n == 0:
            raise WireError(f"{cur.name}.data", f"empty chunk at offset {chunk.offset}")
        if chunk.offset != cur.filled:
            raise WireError(
                f"{cur.name}.offset",
                f"={chunk.offset}, expected {cur.filled} (chunks must be contiguous and in order)",
            )
        end = cur.filled + n
        if end > cur.total:
            raise WireError(
                f"{cur.name}.data",
                f"chunk [{chunk.offset}, {end}) runs past total_bytes={cur.total}",
            )
        cur.buf[cur.filled : end] = data
        cur.filled = end
        if end < cur.total:
            return None
        self._current = None
        frame = TensorFrame(name=cur.name, dtype=cur.dtype, shape=cur.shape, data=cur.buf)
        spec = self.specs.get(cur.name) if self.specs is not None else None
        if spec is not None and spec.require_finite:
            check_finite(frame)
        self.frames[cur.name] = frame
        return frame

    def feed_all(self, chunks: Iterable[tensor_pb2.TensorChunk]) -> dict[str, TensorFrame]:
        """Feed every chunk, then require that no tensor is left incomplete."""
        for chunk in chunks:
            self.feed(chunk)
        self.finish()
        return self.frames

    def finish(self, required: Iterable[str] = ()) -> dict[str, TensorFrame]:
        """Check the sequence ended cleanly: no half tensor, every `required` name present."""
        if self._current is not None:
            cur = self._current
            raise WireError(
                f"{cur.name}.data", f"incomplete: {cur.filled} of {cur.total} bytes received"
            )
        missing = [n for n in required if n not in self.frames]
        if missing:
            raise WireError(
                missing[0],
                f"expected tensor(s) {missing} never arrived (got {sorted(self.frames)})",
            )
        return self.frames

    def _start(self, chunk: tensor_pb2.TensorChunk) -> _Partial:
        name = chunk.name
        if self.specs is not None and name not in self.specs:
            raise WireError(
                "chunk.name", f"unexpected tensor {name!r} (expected one of {sorted(self.specs)})"
            )
        if not name:
            raise WireError("chunk.name", "empty tensor name")
        if name in self.frames:
            raise WireError(f"{name}", "tensor sent twice")
        shape = tuple(chunk.shape)
        total = chunk.total_bytes
        _validate_header(name, chunk.dtype, shape, total, self.limits)
        spec = self.specs.get(name) if self.specs is not None else None
        if spec is not None:
            self._check_spec(spec, chunk.dtype, shape)
        # numpy's allocation is not zero-filled and reuses already-mapped
        # pages across steps; a bytearray would memset every buffer first.
        buf = memoryview(np.empty(total, dtype=np.uint8))
        self._current = _Partial(name=name, dtype=chunk.dtype, shape=shape, total=total, buf=buf)
        return self._current

    def _check_spec(self, spec: TensorSpec, dtype: str, shape: tuple[int, ...]) -> None:
        name = spec.name
        if dtype not in spec.dtypes:
            raise WireError(f"{name}.dtype", f"={dtype}, expected one of {sorted(spec.dtypes)}")
        if spec.shape is None:
            return
        if len(shape) != len(spec.shape):
            raise WireError(
                f"{name}.shape",
                f"={shape} has rank {len(shape)}, expected "
                f"rank {len(spec.shape)} {_spec_text(spec.shape)}",
            )
        new: dict[str, tuple[int, str]] = {}
        for i, (dim, want) in enumerate(zip(shape, spec.shape, strict=True)):
            if want is None:
                continue
            if isinstance(want, int):
                if dim != want:
                    raise WireError(f"{name}.shape[{i}]", f"={dim}, expected {want}")
                continue
            bound = self.bindings.get(want) or new.get(want)
            if bound is None:
                new[want] = (dim, f"{name}.shape[{i}]")
            elif bound[0] != dim:
                raise WireError(
                    f"{name}.shape[{i}]", f"={dim}, expected {want}={bound[0]} (from {bound[1]})"
                )
        # Bind only once the whole tensor header is accepted.
        self.bindings.update(new)

    def _check_continuation(self, cur: _Partial, chunk: tensor_pb2.TensorChunk) -> None:
        if chunk.name != cur.name:
            raise WireError(
                "chunk.name",
                f"{chunk.name!r} started before {cur.name!r} was "
                f"complete ({cur.filled} of {cur.total} bytes)",
            )
        if chunk.dtype != cur.dtype:
            raise WireError(
                f"{cur.name}.dtype",
                f"={chunk.dtype!r} in a later chunk, first chunk said {cur.dtype!r}",
            )
        if tuple(chunk.shape) != cur.shape:
            raise WireError(
                f"{cur.name}.shape",
                f"={tuple(chunk.shape)} in a later chunk, first chunk said {cur.shape}",
            )
        if chunk.total_bytes != cur.total:
            raise WireError(
                f"{cur.name}.total_bytes",
                f"={chunk.total_bytes} in a later chunk, first chunk said {cur.total}",
            )


def _spec_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"


def assemble(
    chunks: Iterable[tensor_pb2.TensorChunk], limits: WireLimits | None = None
) -> dict[str, TensorFrame]:
    """Rebuild every tensor in a finished chunk sequence (no name restrictions)."""
    return ChunkAssembler(limits=limits or WireLimits()).feed_all(chunks)
