"""Tensors <-> raw little-endian buffers <-> streams of tensor chunks.

`TensorFrame` is the typed form of one tensor on the wire (name, dtype,
shape, bytes) and `Chunk` the typed form of one TensorChunk message.
`tensor_to_frame` / `frame_to_tensor` convert to and from torch;
`frame_to_chunks` cuts a frame into chunks whose data are views of the
frame (no copy), and `ChunkAssembler` puts chunks back together, validating
every field before it copies a byte, so a servicer can reject bad input
without touching state. Each chunk's bytes are written once, into a buffer
sized for the whole tensor (reused across a stream's steps, see
ReceiveBuffers), and checked for NaN and Inf in slices of a few megabytes
right after they are written, while still in cache; a spec's value check
runs as soon as its tensor is complete. Nothing is pickled: the buffer is the tensor's
elements in C order, little-endian, and bfloat16 travels as its 16-bit
patterns. fedsllm.wire.codec turns chunks into message bytes and back.

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
    from fedsllm.wire.codec import ChunkKey, LaidChunk

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
# The wire dtypes numpy has (all but bfloat16), both ways: the hot path goes
# through numpy, whose calls cost far less than torch's on a cold step.
_NUMPY_DTYPES: Mapping[str, np.dtype] = {
    name: np.dtype(name) for name in DTYPE_ITEMSIZE if name != "bfloat16"
}
_NUMPY_WIRE_NAMES: Mapping[np.dtype, str] = {v: k for k, v in _NUMPY_DTYPES.items()}
# The same dtypes as the wire lays them out (little-endian), to read a
# received buffer's values in place on any host.
_NUMPY_WIRE_DTYPES: Mapping[str, np.dtype] = {
    name: dtype.newbyteorder("<") for name, dtype in _NUMPY_DTYPES.items()
}
_LITTLE_ENDIAN = sys.byteorder == "little"
MAX_NDIM = 8
DEFAULT_MAX_TENSOR_BYTES = 512 * 2**20
# Received bytes are checked for NaN and Inf in slices of about this size,
# small enough to still be in a server CPU's last-level cache, large enough
# that a step's activations (a few MB) take one call: each call is a few
# numpy or torch operations, which cost more than the data on a cold step.
FINITE_CHECK_BYTES = 4 * 2**20

# Chunks of this size or more are copied by numpy, which lets go of the GIL
# meanwhile (as CPython's bytes.join does from 1 MiB); smaller ones by a
# buffer assignment, the cheaper call.
GIL_FREE_COPY_BYTES = 2**20

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class TensorFrame:
    """One tensor as it travels: `data` holds prod(shape) * itemsize bytes.

    `data` may share memory with the tensor it came from (tensor_to_frame
    does not copy when no cast is needed); take `bytes(frame.data)` to own it.

    Treated as immutable, but not frozen, like Chunk: every step makes one
    per tensor on each side, and a frozen dataclass's constructor costs an
    object.__setattr__ call per field (issue 13). Not hashable (nothing
    hashes a frame; its data is usually a writable view, unhashable anyway)."""

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
    check: Callable[[np.ndarray], None] | None = None
    """Checks of the values (a mask's 0/1, a label's range), given the
    elements as a read-only numpy array of the tensor's shape; raises
    WireError for a bad value (anything else it raises is a bug, and passes
    through as such). The assembler calls it the moment the tensor is complete,
    before its frame is handed on: a step's small tensors come first, so
    their checks run while its activations are still arriving (issue 13),
    and a bad value is refused before the rest of the step is received. For
    dtypes numpy has (not bfloat16); the array must not outlive the call,
    as the buffer under it is reused."""

    def __post_init__(self) -> None:
        if self.check is not None and "bfloat16" in self.dtypes:
            raise ValueError(f"TensorSpec {self.name!r}: a value check cannot read bfloat16")


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


def _frame_via_numpy(name: str, tensor: torch.Tensor, wire_dtype: str | None) -> TensorFrame | None:
    """The frame of the usual tensor (CPU, contiguous, not requiring grad, a dtype
    numpy has, already in `wire_dtype`, at least one dimension, not empty) with
    one torch call, `numpy()`, which refuses everything else; None for the rest.
    A cold torch call costs tens of microseconds, and a step makes this once
    per tensor on each side (issue 13)."""
    if not _LITTLE_ENDIAN:  # pragma: no cover - x86/arm are little-endian
        return None
    try:
        arr = tensor.numpy()
    except (RuntimeError, TypeError):  # grad, another device, bfloat16, conj/neg bits
        return None
    dtype = _NUMPY_WIRE_NAMES.get(arr.dtype)
    view = memoryview(arr)
    if (
        dtype is None
        or (wire_dtype is not None and wire_dtype != dtype)
        or not view.ndim
        or not view.nbytes
        or not view.c_contiguous
    ):
        return None
    return TensorFrame(name, dtype, arr.shape, view.cast("B"))


def tensor_to_frame(name: str, tensor: torch.Tensor, wire_dtype: str | None = None) -> TensorFrame:
    """Encode a tensor (any device) as a frame, cast to `wire_dtype` if given.

    Rejects empty tensors and dtypes outside the allow-list, so a sender fails
    at the source rather than the receiver failing later.
    """
    frame = _frame_via_numpy(name, tensor, wire_dtype)
    if frame is not None:
        return frame
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


_NO_SIZE_LIMIT = WireLimits(max_tensor_bytes=sys.maxsize)
"""A frame already in memory is checked for consistency, not for size."""


def frame_to_tensor(
    frame: TensorFrame, dtype: torch.dtype | None = None, *, copy: bool = True
) -> torch.Tensor:
    """Decode a frame into a CPU tensor of its shape, cast to `dtype` if given.

    With copy=True (the default) the result owns its memory and is writable.
    copy=False wraps a writable buffer (as ChunkAssembler produces) without
    copying; use it only when nothing else holds that buffer.
    """
    import torch

    _validate_header(frame.name, frame.dtype, frame.shape, frame.num_bytes, _NO_SIZE_LIMIT)
    data = frame.data
    readonly = memoryview(data).readonly
    np_dtype = _NUMPY_DTYPES.get(frame.dtype)
    if not copy and not readonly and np_dtype is not None and _LITTLE_ENDIAN:
        # One torch call (from_numpy) instead of frombuffer and a reshape.
        t = torch.from_numpy(np.frombuffer(data, dtype=np_dtype).reshape(frame.shape))
        return t if dtype is None or dtype == t.dtype else t.to(dtype)
    if sys.byteorder == "big" and DTYPE_ITEMSIZE[frame.dtype] > 1:  # pragma: no cover
        data = bytearray(_byteswap(data, DTYPE_ITEMSIZE[frame.dtype]))
    elif copy or readonly:
        data = bytearray(data)
    t = torch.frombuffer(data, dtype=_torch_dtype(frame.dtype)).reshape(frame.shape)
    if dtype is not None and dtype != t.dtype:
        t = t.to(dtype)
    return t


# ---------------------------------------------------------------- chunks


@dataclass(slots=True)
class Chunk:
    """One TensorChunk message as a record: bytes [offset, offset + len(data)) of
    a tensor. `data` may be a view into a frame or into received message
    bytes; it is copied once, by the assembler.

    Treated as immutable, but not a frozen dataclass: a step makes a dozen of
    them on each side, and a frozen dataclass's constructor (an
    object.__setattr__ per field) costs four times a plain one's (issue 13)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    total_bytes: int
    offset: int
    data: Buffer


def chunk_to_proto(chunk: Chunk) -> tensor_pb2.TensorChunk:
    """The protobuf form (copies the data; the hot path uses fedsllm.wire.codec)."""
    from fedsllm.proto import tensor_pb2

    return tensor_pb2.TensorChunk(
        name=chunk.name,
        dtype=chunk.dtype,
        shape=list(chunk.shape),
        total_bytes=chunk.total_bytes,
        offset=chunk.offset,
        data=bytes(chunk.data),
    )


def chunk_from_proto(msg: tensor_pb2.TensorChunk) -> Chunk:
    return Chunk(
        name=msg.name,
        dtype=msg.dtype,
        shape=tuple(msg.shape),
        total_bytes=msg.total_bytes,
        offset=msg.offset,
        data=msg.data,
    )


def frame_to_chunks(frame: TensorFrame, chunk_bytes: int) -> Iterator[Chunk]:
    """Cut a frame into chunks of at most `chunk_bytes` data each, as views of
    the frame's buffer (nothing is copied here).

    Every chunk repeats name, dtype, shape and total_bytes (a few bytes) so
    each one can be checked on its own.
    """
    if chunk_bytes <= 0:
        raise WireError("chunk_bytes", f"must be > 0, got {chunk_bytes}")
    view = memoryview(frame.data).cast("B")
    total = view.nbytes
    shape = tuple(frame.shape)
    for offset in range(0, total, chunk_bytes):
        yield Chunk(
            name=frame.name,
            dtype=frame.dtype,
            shape=shape,
            total_bytes=total,
            offset=offset,
            data=view[offset : offset + chunk_bytes],
        )


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


@np.errstate(over="ignore")
def _sum_of_squares(t: np.ndarray) -> float:
    """One BLAS dot of a float32 array with itself. An overflowing square is
    expected, and decided by _all_finite's exact check: no RuntimeWarning in
    a role's log for a peer's large values. The errstate object is built
    once, as a decorator, which sets and resets numpy's state around each
    call with a token of the call's own (so threads may share it); built
    and entered at every call, as a `with` block, it cost about 18 us more
    of a step's 85-100 us check of 1.57 MB when the step starts cold (issue
    13; measured alternating the two)."""
    return float(np.dot(t, t))


def _all_finite(t: torch.Tensor | np.ndarray) -> bool:
    """True when the float elements `t` (a torch tensor, or a float32 numpy
    array) hold no NaN or Inf.

    Fast path: any NaN or Inf makes the sum non-finite, so a finite sum
    proves every element finite (torch.isfinite over the whole tensor is
    about 30x slower here). The sum accumulates in float32 whatever the
    dtype, so half-precision values do not overflow it; a sum that still
    overflows falls through to the exact check, which is False only for a
    real NaN or Inf. A float32 array takes the sum of squares instead (one
    BLAS dot): a NaN or Inf in `t` makes it NaN or Inf, and so can finite
    values above about 1.8e19, whose squares overflow; those fall through to
    the exact check like an overflowing sum. A cold numpy call costs a
    fraction of a cold torch call, and a step makes one per float tensor on
    each side (issue 13).
    """
    if type(t) is np.ndarray:
        return math.isfinite(_sum_of_squares(t)) or bool(np.isfinite(t).all())
    import torch

    return math.isfinite(float(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


def _raise_non_finite(name: str, t: torch.Tensor | np.ndarray) -> None:
    import torch

    if type(t) is np.ndarray:
        t = torch.from_numpy(t)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).nonzero()[0, 0])
        raise WireError(
            f"{name}.data",
            f"{bad} non-finite value(s), first at flat index {first} ({float(t[first])})",
        )


def check_finite(frame: TensorFrame) -> None:
    """WireError when a float frame holds NaN or Inf (an update that would
    poison the shared model)."""
    if frame.dtype not in FLOAT_DTYPES:
        return
    t = frame_to_tensor(frame, copy=False).reshape(-1)
    if not _all_finite(t):
        _raise_non_finite(frame.name, t)


def _refcount(buffers: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(buffers[i])


class ReceiveBuffers:
    """The receive buffers of one stream, reused from step to step.

    A fresh buffer costs a page fault per 4 KiB the first time it is written
    (a 64 MiB tensor: about a fifth of its transfer time on loopback); a
    buffer written last step is already mapped. A buffer is handed out again
    only when nothing outside this pool refers to it: every memoryview,
    frame and tensor over it holds a reference (CPython reference counts),
    so a tensor the caller kept is never overwritten. At most `max_buffers`
    are kept (the oldest is dropped first): enough for two steps of three
    tensors, since a reader's caller usually still holds the last step while
    the next one arrives.
    """

    def __init__(self, max_buffers: int = 8) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        # References a pooled array has when nobody else holds it (the list's,
        # and the argument's), measured rather than assumed.
        self._free_refs = _refcount([np.empty(0, dtype=np.uint8)], 0)

    def take(self, num_bytes: int) -> np.ndarray:
        """A writable uint8 array of exactly `num_bytes` (contents undefined),
        the pool's own: the assembler writes through it and views it as the
        tensor's dtype and shape, without an np.frombuffer over a memoryview
        (a cold numpy call costs several microseconds; issue 13)."""
        for i in range(len(self._buffers)):
            if (
                self._buffers[i].nbytes == num_bytes
                and _refcount(self._buffers, i) == self._free_refs
            ):
                array = self._buffers.pop(i)
                self._buffers.append(array)  # most recently used last
                return array
        array = np.empty(num_bytes, dtype=np.uint8)
        self._buffers.append(array)
        if len(self._buffers) > self.max_buffers:
            del self._buffers[0]
        return array


@dataclass(slots=True)
class _Partial:
    key: ChunkKey
    """(name, dtype, shape, total bytes): what every later chunk must repeat."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    total: int
    """The key's four fields, each its own attribute: read for every chunk,
    where a property is a function call (issue 13)."""
    buf: memoryview
    """A memoryview of `array`: the finished frame's data."""
    array: np.ndarray
    """The tensor's bytes (uint8), the receive pool's own array or a fresh
    one, written chunk by chunk."""
    filled: int = 0
    elements: torch.Tensor | np.ndarray | None = None
    """Flat view of `buf` as the tensor's dtype, when finiteness is checked
    (a numpy array for float32, a torch tensor for half precision)."""
    checked: int = 0
    """Elements already checked for NaN and Inf (whole elements received)."""
    all_finite: bool = True
    check: Callable[[np.ndarray], None] | None = None
    """The spec's value check, run once the tensor is complete."""
    tensor: torch.Tensor | None = None
    """The torch tensor over `buf` (ChunkAssembler.make_tensors)."""


def _copy_into(cur: _Partial, data: Buffer, end: int) -> None:
    """Write `data` at cur.filled..end of the tensor's buffer: a chunk of the
    usual size by buffer assignment, the cheapest call; a large one (and an
    array, or a view of another one-byte format, which buffer assignment
    refuses) by numpy, which lets go of the GIL while it copies."""
    if end - cur.filled < GIL_FREE_COPY_BYTES and type(data) is not np.ndarray:
        try:
            cur.buf[cur.filled : end] = data
            return
        except (TypeError, ValueError):
            pass
    cur.array[cur.filled : end] = np.frombuffer(data, dtype=np.uint8)


@dataclass(slots=True)
class ChunkAssembler:
    """Rebuilds tensors from a sequence of TensorChunk messages.

    Feed chunks (`Chunk` records or TensorChunk messages) in order; `feed`
    returns the TensorFrame when a tensor's last chunk arrives, else None.
    Every check runs before the chunk's bytes are copied: the name is
    expected and not yet received, dtype and shape match the spec (symbols
    bind across tensors), total_bytes agrees with the shape and the size
    limit, offsets are contiguous, nothing runs past the total, and no other
    tensor starts before the current one completes. The bytes go straight
    into one buffer of the tensor's size (no join). Where the spec asks for
    finite values, the whole elements received are checked as soon as about
    FINITE_CHECK_BYTES of them (or the last chunk) are written, so the check
    reads data still in cache and the tensor is never read again for it; a
    non-finite value is reported, with its count and first index, when the
    tensor completes, and then the spec's value check runs (TensorSpec.check).
    Any violation raises
    WireError naming the field and the values.

    `specs=None` accepts any name with any allowed dtype and shape.

    With `make_tensors`, each tensor's torch tensor over its buffer is made
    when its first chunk arrives, so that torch call (tens of microseconds
    on a cold step) overlaps the transfer of the later chunks instead of
    following the last (issue 13); the finished ones are in `tensors`.
    """

    limits: WireLimits = field(default_factory=WireLimits)
    specs: Mapping[str, TensorSpec] | None = None
    buffers: ReceiveBuffers | None = None
    """Where tensor buffers come from (a stream's pool); None: a fresh one each."""
    make_tensors: bool = False
    frames: dict[str, TensorFrame] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """With make_tensors: each finished tensor, over its frame's buffer (on a
    big-endian host none, as frame_to_tensor byte-swaps there)."""
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

    def feed(self, chunk: Chunk | tensor_pb2.TensorChunk) -> TensorFrame | None:
        """Validate and buffer one chunk; the finished frame when it was the last."""
        cur = self._current
        if cur is None:
            cur = self._start(chunk)
        else:
            self._check_continuation(cur, chunk)
        return self._append(cur, chunk.offset, chunk.data)

    def feed_laid(self, laid: Iterable[LaidChunk], buf: bytes, base: int) -> None:
        """Feed the chunks of a received part message as fedsllm.wire.codec
        laid them out (key, offset, data start and stop from `base` in `buf`),
        with the same checks as `feed`, without a Chunk record for a chunk
        that continues the tensor in progress (the same key: name, dtype,
        shape and total all match)."""
        view = memoryview(buf)
        for key, offset, a, b in laid:
            cur = self._current
            if cur is not None and key == cur.key:
                self._append(cur, offset, view[base + a : base + b])
            else:
                self.feed(Chunk(*key, offset, view[base + a : base + b]))

    def _append(self, cur: _Partial, offset: int, data: Buffer) -> TensorFrame | None:
        """Write the next chunk of `cur` (not empty, at the offset reached, not
        past the total), check finiteness, finish the tensor with its last."""
        n = len(data)
        if n == 0:
            raise WireError(f"{cur.name}.data", f"empty chunk at offset {offset}")
        if offset != cur.filled:
            raise WireError(
                f"{cur.name}.offset",
                f"={offset}, expected {cur.filled} (chunks must be contiguous and in order)",
            )
        end = cur.filled + n
        total = cur.total
        if end > total:
            raise WireError(
                f"{cur.name}.data", f"chunk [{offset}, {end}) runs past total_bytes={total}"
            )
        _copy_into(cur, data, end)
        cur.filled = end
        if cur.elements is not None and cur.all_finite:
            itemsize = DTYPE_ITEMSIZE[cur.dtype]
            whole = end // itemsize
            # In slices of a few megabytes: still in cache, and few calls.
            if whole > cur.checked and (
                end == total or (whole - cur.checked) * itemsize >= FINITE_CHECK_BYTES
            ):
                cur.all_finite = _all_finite(cur.elements[cur.checked : whole])
                cur.checked = whole
        if end < total:
            return None
        self._current = None
        frame = TensorFrame(name=cur.name, dtype=cur.dtype, shape=cur.shape, data=cur.buf)
        if not cur.all_finite and cur.elements is not None:
            _raise_non_finite(cur.name, cur.elements)
        if cur.check is not None:
            values = cur.array.view(_NUMPY_WIRE_DTYPES[cur.dtype]).reshape(cur.shape)
            values.flags.writeable = False
            cur.check(values)
        self.frames[cur.name] = frame
        if cur.tensor is not None:
            self.tensors[cur.name] = cur.tensor
        return frame

    def feed_all(self, chunks: Iterable[Chunk | tensor_pb2.TensorChunk]) -> dict[str, TensorFrame]:
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

    def _start(self, chunk: Chunk | tensor_pb2.TensorChunk) -> _Partial:
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
        dtype = chunk.dtype
        array = (
            self.buffers.take(total)
            if self.buffers is not None
            else np.empty(total, dtype=np.uint8)  # not zero-filled: the chunks write every byte
        )
        buf = memoryview(array)
        elements = None
        if spec is not None and spec.require_finite and dtype in FLOAT_DTYPES:
            if dtype == "float32" and _LITTLE_ENDIAN:
                elements = array.view(np.float32)  # numpy: see _all_finite
            else:  # half precision: numpy's sums of it are slow, bfloat16 it lacks
                import torch

                elements = torch.frombuffer(buf, dtype=_torch_dtype(dtype))
        self._current = _Partial(
            key=(name, dtype, shape, total),
            name=name,
            dtype=dtype,
            shape=shape,
            total=total,
            buf=buf,
            array=array,
            elements=elements,
            check=spec.check if spec is not None else None,
            tensor=self._tensor_over(array, name, dtype, shape) if self.make_tensors else None,
        )
        return self._current

    @staticmethod
    def _tensor_over(
        array: np.ndarray, name: str, dtype: str, shape: tuple[int, ...]
    ) -> torch.Tensor | None:
        """The tensor over a buffer before its bytes are in: for a dtype numpy
        has, the pool's array viewed as the dtype and shape (two numpy calls
        and one torch call, the header already checked); for bfloat16, by
        frame_to_tensor. None where the wire's byte order is not the host's
        (frame_to_tensor would copy to swap them)."""
        if not _LITTLE_ENDIAN:  # pragma: no cover - x86/arm are little-endian
            return None
        np_dtype = _NUMPY_DTYPES.get(dtype)
        if np_dtype is None:
            return frame_to_tensor(TensorFrame(name, dtype, shape, memoryview(array)), copy=False)
        import torch

        return torch.from_numpy(array.view(np_dtype).reshape(shape))

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

    def _check_continuation(self, cur: _Partial, chunk: Chunk | tensor_pb2.TensorChunk) -> None:
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
        # A decoded chunk's shape is already a tuple: compare before converting.
        if chunk.shape != cur.shape and tuple(chunk.shape) != cur.shape:
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
    chunks: Iterable[Chunk | tensor_pb2.TensorChunk], limits: WireLimits | None = None
) -> dict[str, TensorFrame]:
    """Rebuild every tensor in a finished chunk sequence (no name restrictions)."""
    return ChunkAssembler(limits=limits or WireLimits()).feed_all(chunks)
