"""Wire-layer speed on loopback against raw gRPC: tensor streaming throughput and
the activation/gradient echo round trip, each as a ratio to a stream of
ready-made byte messages over the same gRPC, measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/wire_throughput.py [--quick] [--reps-scale X]
        [--only stream|sides|echo|codec] [--compare-fold] [--in-process] [--pin]
        [--between-steps nothing|model]

The project side speaks Train wire version 2 (fedsllm.wire.train): a step is
StepPart messages, the header folded into the first, the end flag into the
last, the small tensors (mask, labels) first, whole, with the first
activation chunk (as client.remote sends them); the
echo's reply is ReplyPart messages, the result folded into the first (as the
main server replies when the downlink is not paced).

(a) uploads one float32 tensor as a Train step (chunked, assembled and
    validated by the server, which replies with a result and no tensor) for
    1.57 MB and 67 MB tensors at 64 KiB, 256 KiB (the scenario default) and
    1 MiB chunks, shaped (1, 2, n) with a (1, 2) mask and labels: the
    smallest step the main server accepts. "project" is read with the wire's
    own checks (dtype, shape against bytes); "validated" with the main
    server's too (finiteness, the mask's and labels' values, B and T bound
    across the three; the width left free). raw = two 16-byte messages (the
    mask and labels) and the tensor's bytes as ready-made messages of the
    chunk size, on a stream kept open across steps (as the project's is),
    answered by one small reply. (The project sends as many messages as the
    tensor has chunks: two fewer.) Goal: project / raw >= 0.9 at the default
    chunk size, with validation off and on. Below the table, the same for a
    1 KiB step: what a step costs whatever its size.
(b) a 1.57 MB activation echo: (8, 64, 768) float32 activations + mask +
    labels up, a same-size gradient down, decoded to a tensor; with the
    wire's validation off (dtype and shape against bytes only) and on (also
    finiteness both ways, mask values and label range, as the main server
    checks them). raw = a bidirectional stream carrying the same bytes as
    ready-made messages up (activation chunks, mask, labels) and down
    (gradient chunks), step by step. Goal: project / raw <= 1.2.
    --compare-fold also times the project with the reply's result as a
    message of its own before the gradient's chunks (the paced layout).
    Below the table, each variant's CPU time per step in the client's
    process and the server's (every thread, gRPC's included): on a host with
    few cores the wall time follows it, so the "extra" column is what the
    framework costs over the transport.
(c) the codec alone (frame -> StepParts -> bytes -> parts -> assembler ->
    tensor), no gRPC; then one echo step's wire work in this process, stage
    by stage (client builds, server reads, server replies, client reads),
    with validation off and on, against the copy floor's copies of the same
    messages: "total - copies" is what the framework's Python costs per step,
    the project's own share of the echo's excess over raw.

(d) where the time of table (a)'s step goes, by side (1 KiB and 1.57 MB, the
    default chunk size, plain): "packed" is raw gRPC carrying the project's
    own messages (the bytes its serializer makes, ready-made, the client
    waiting as the sync project's did) to a server that reads nothing and
    answers each step with a ready-made result (the sink); "client alone"
    is the project's client against the sink; "server alone" the packed
    messages to the project's server. Their excesses over packed, paired
    step by step, are what each side's handling costs (its copies, checks
    and Python); the project's own excess is about their sum. Raw, table
    (a)'s, sends two messages more than packed (the mask and the labels on
    their own); raw waiting for its reply as packed does differs from packed
    in that alone, so its excess over packed is what two messages cost here.

Tables (a) and (b) also time a "copy floor": the raw stream plus the one
copy per message on each side that any tensor framework on gRPC-Python 1.85
has to make, since its messages are `bytes` (the sender copies each message
out of the tensor, the receiver copies it into a tensor-sized buffer; the
server's reply likewise). Each run checks that premise first, on the grpcio
installed: the line under the header says which of bytes, memoryview and
bytearray a serializer may hand gRPC (message_types_taken). The floor
separates what the copies cost (floor / raw) from what the framework's own
code costs (project / floor). Table (b) also
times a minimal framework (LeanEcho): the copy floor plus the six torch
calls of a step and a prefix check per message, and nothing else. It says
how close to raw a framework written in Python gets on the host at hand,
and project / minimal what the project's structure and checks cost.

--between-steps model runs a small model's forward and backward pass before
every timed repetition (untimed; ModelBetweenSteps), as a client computes
between two steps: every variant's step then starts as a real client's
does, with its caches full of the model's data rather than the wire's. Run
back to back (the default), a step finds the code and data of the step
before it still in cache, which a training loop never offers; the goals are
judged on the default, as the issue measured them.

--pin runs this process on one CPU and the server's on another core. The
scheduler then moves no thread, and a thread woken by another of its
process runs on the same CPU, so the repetitions of a run spread less (the
paired ratios' interquartile ranges about half as wide, 2 runs on the
development machine); but no thread of a process runs beside another of
it, so each process's Python shows in full, and the project, with more
Python per step than raw, reads further from raw than unpinned. It is a
microscope for A/B work on the wire; the goals are judged unpinned, as the
issue measured them.

The project's client runs its Train stream on grpc.aio
(fedsllm.wire.train_client): a step's messages are written, and its reply
read, on the caller's thread, through an event loop that runs only then.
Raw is issue 13's: ready-made messages on gRPC's sync API, its reply waited
for on gRPC's iterator at once. "raw_aio" is raw on a grpc.aio client, the
transport the project's client now has; wire_goals.py judges the goals
against both. The sync client the project had waited for its reply only
once gRPC had sent the step's last message (RequestQueue.wait_sent: gRPC-
Python wakes a thread waiting on the reply at every message sent); raw
waiting that way ("raw, waiting as the project") and the minimal framework,
which waits so too, are kept as that client's references.

One run's ratios move by 0.05-0.1 from the next on a host with two cores:
benchmarks/wire_goals.py repeats the goals' rows of (a) and (b) in rounds,
each in a fresh client and server process, and counts the rounds that meet
each goal.

Project and raw repetitions alternate, so a load spike on a shared host hits
both; the figures are medians. The server runs in a child process, as the
main server does in a run; pass --in-process to share one interpreter (and
its GIL) with the client.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import grpc
import numpy as np
import torch

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2_grpc
from fedsllm.wire import rpc
from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo, TrainHelloInfo, TrainWelcomeInfo
from fedsllm.wire.tensors import (
    ChunkAssembler,
    TensorFrame,
    TensorSpec,
    frame_to_tensor,
    tensor_to_frame,
)
from fedsllm.wire.train import (
    TRAIN_METHOD,
    ReplyPart,
    decode_train_request,
    decode_train_response,
    encode_train_request,
    encode_train_response,
    read_downlink,
    read_uplink,
    step_download_responses,
    step_upload_requests,
)
from fedsllm.wire.train_client import AioLink, TrainCall
from main_server.step_checks import StepLimits, step_specs

FLOATS = frozenset({"float32", "bfloat16", "float16"})
INTS = frozenset({"int64"})
CHUNK_SIZES = (64 * 2**10, 256 * 2**10, 2**20)
DEFAULT_CHUNK = 256 * 2**10
ECHO_SHAPE = (8, 64, 768)
FOLD_DOWNLINK = True
"""Whether the echo's result rides in the gradient's first message."""
VOCAB = 50257
UPLOAD_BYTES = 4 * math.prod(ECHO_SHAPE)
"""The small upload of table (a), 1.57 MB: the echo's activations (float32),
as one flat tensor."""
BIG_UPLOAD_BYTES = 64 * 2**20
"""The large upload of table (a), 67 MB."""
DEFAULT_REPS = (150, 20, 300)
"""Repetitions of the 1.57 MB upload, the 67 MB upload and the echo: a 64 MiB
repetition is tens of ms, enough of them that one load spike on the host
does not make the row; the others take a few ms each, and this host's speed
moves by tens of percent from one second to the next, so hundreds of them
(40 and 100 gave rows that moved by 0.1 between runs of one code)."""
TINY_BYTES = 1024
"""The payload of the per-step cost line under table (a)."""


def _specs(validate: bool, any_width: bool = False) -> tuple[TensorSpec, ...]:
    """The server's specs: with validation, the main server's own
    (main_server.step_checks: shapes, finiteness, mask and label values),
    built once, as the main server builds them. `any_width` frees the
    activations' last dimension (the hidden size), so that table (a)'s
    uploads, whose sizes no hidden size divides, are read with every other
    check of the main server's."""
    return _built_specs(validate, validate and any_width)


@functools.cache
def _built_specs(validate: bool, any_width: bool) -> tuple[TensorSpec, ...]:
    if not validate:
        return (
            TensorSpec("activations", FLOATS),
            TensorSpec("attention_mask", INTS),
            TensorSpec("labels", INTS),
        )
    if not any_width:
        return tuple(step_specs(ECHO_LIMITS))
    return tuple(
        dataclasses.replace(spec, shape=(*spec.shape[:-1], None))
        if spec.name == "activations"
        else spec
        for spec in _built_specs(True, False)
    )


ECHO_LIMITS = StepLimits(
    hidden_size=ECHO_SHAPE[2],
    vocab_size=VOCAB,
    max_seq_len=ECHO_SHAPE[1],
    max_batch=ECHO_SHAPE[0],
    wire_dtype="float32",
    num_clients=1,
    max_tensor_bytes=2**30,
)
"""The limits the validated echo's server reads steps with, as the main
server's are built."""


SERVER_STAGES = ("finite", "values", "shapes", "reply")
"""What the server can leave out of half the steps (benchmarks/wire_step_costs.py):
the activations' finiteness check, the mask and label value checks, the shape
checks (symbols bound across tensors), and building the reply (the previous
step's reply parts are sent again; their head is serialized and their
payload copied as usual)."""


def skipped(step: int) -> bool:
    """Whether a staged stream leaves its stage out of step `step`: with, without,
    without, with, and again, so each pair of steps has one of each and half
    the pairs start with each (an effect of order cancels)."""
    return step % 4 in (1, 2)


def server_specs(
    validate: bool, skip: str, step: int, any_width: bool = False
) -> Sequence[TensorSpec]:
    """The specs the server reads step `step` with: _specs(validate,
    any_width), less the check `skip` names where skipped(step)."""
    specs = _specs(validate, any_width)
    if not validate or not skipped(step) or skip not in ("finite", "values", "shapes"):
        return specs
    if skip == "finite":
        return tuple(dataclasses.replace(spec, require_finite=False) for spec in specs)
    if skip == "values":
        return tuple(dataclasses.replace(spec, check=None) for spec in specs)
    return tuple(dataclasses.replace(spec, shape=None) for spec in specs)


class BenchServer(main_server_pb2_grpc.MainServerServicer):
    """Train mode echoes the activations as the gradient; eval mode returns none.
    The hello's scenario_hash carries "<chunk bytes>:<validate 0|1|w>:<fold 0|1>"
    (validate w: with the activations' width free, _specs' any_width; fold:
    the result in the gradient's first message, else a message of its own
    before the chunks), optionally followed by ":<stage>", one of SERVER_STAGES
    left out of the steps `skipped` names."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        chunk_bytes, validate, any_width, fold, skip = 2**20, False, False, True, ""
        last_reply: list[Any] = []
        try:
            uplink = read_uplink(
                request_iterator,
                lambda header: server_specs(validate, skip, header.step, any_width),
            )
            for item in uplink:
                if isinstance(item, TrainHelloInfo):
                    chunk, flag, folded, *stage = item.scenario_hash.split(":")
                    chunk_bytes, fold = int(chunk), folded == "1"
                    validate, any_width = flag != "0", flag == "w"
                    skip = stage[0] if stage else ""
                    yield TrainWelcomeInfo(
                        client_id=item.client_id,
                        scenario_hash=item.scenario_hash,
                        max_tensor_bytes=2**30,
                    )
                    continue
                off = skipped(item.header.step)
                acts = item.tensor("activations")
                if validate:  # the main server makes all three for the model
                    item.tensor("attention_mask")
                    item.tensor("labels")
                if off and skip == "reply" and last_reply:
                    for part in last_reply:
                        if type(part) is ReplyPart:  # serialized and copied again, as new ones
                            part._pieces = None
                    yield from last_reply
                    continue
                names = ("activations_grad",) if item.header.mode == "train" else ()
                result = StepResultInfo(
                    round=0,
                    step=item.header.step,
                    loss=0.0,
                    num_tokens=0,
                    server_compute_s=0.0,
                    tensor_names=names,
                )
                frames = [tensor_to_frame("activations_grad", acts)] if names else []
                reply = step_download_responses(result, frames, chunk_bytes, fold)
                if skip == "reply":
                    last_reply = list(reply)
                    reply = iter(last_reply)
                yield from reply
        except WireError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))


STEP_NAMES = ("attention_mask", "labels", "activations")
"""A step's tensors in the order client.remote sends them."""


def step_of(
    step: int, mode: str, acts: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[StepHeaderInfo, list[TensorFrame]]:
    """A benchmark step's header and frames (round 0), as client.remote makes
    them: the small tensors first, then the activations."""
    frames = [
        tensor_to_frame("attention_mask", mask),
        tensor_to_frame("labels", labels),
        tensor_to_frame("activations", acts),
    ]
    header = StepHeaderInfo(
        round=0, step=step, mode=mode, downlink_bps=0.0, tensor_names=STEP_NAMES
    )
    return header, frames


class Session:
    """One open Train stream with a given chunk size, on the project's own
    client transport (fedsllm.wire.train_client, as client.remote's
    MainServerStream runs it): a step's parts, views of the tensors, are
    encoded as each is written, and its reply read, on this thread."""

    def __init__(
        self,
        address: str,
        chunk_bytes: int,
        validate: bool = False,
        fold: bool = True,
        method: str = TRAIN_METHOD,
        serializers: tuple[Callable[[Any], bytes], Callable[[bytes], Any]] = (
            encode_train_request,
            decode_train_response,
        ),
        metadata: tuple[tuple[str, str], ...] = (),
        server_skip: str = "",
        any_width: bool = False,
    ) -> None:
        """`method`, `serializers` (request, response) and `metadata`: another
        method for the same client (table (d)'s sink), or marking
        (de)serializers (wire_timeline.py). `server_skip`: a stage of
        SERVER_STAGES the server leaves out of the steps `skipped` names;
        `any_width`: with `validate`, the server reads activations of any last
        dimension (_specs)."""
        self.chunk_bytes = chunk_bytes
        self.validate = validate
        self.shape: tuple[int, ...] | None = None
        self.link = AioLink(address)
        try:
            self.call = TrainCall(
                self.link,
                self._grad_specs,
                metadata=metadata,
                method=method,
                request_serializer=serializers[0],
                response_deserializer=serializers[1],
                timeout_s=600,
            )
            hello = TrainHelloInfo(
                client_id=0,
                scenario_hash=f"{chunk_bytes}:{('w' if any_width else '1') if validate else '0'}:"
                f"{int(fold)}" + (f":{server_skip}" if server_skip else ""),
                wire_dtype="float32",
            )
            self.call.open(hello)
        except BaseException:
            self.link.close()
            raise
        self.step = 0

    def _grad_specs(self, _result: StepResultInfo) -> list[TensorSpec]:
        if not self.validate:
            return [TensorSpec("activations_grad", FLOATS)]
        return [TensorSpec("activations_grad", FLOATS, self.shape, require_finite=True)]

    def run_step(
        self, acts: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, mode: str
    ) -> torch.Tensor | None:
        self.shape = tuple(acts.shape)
        header, frames = step_of(self.step, mode, acts, mask, labels)
        self.step += 1
        self.call.send(list(self._requests(header, frames)))
        reply = self.call.receive()
        if reply is None:
            raise RuntimeError("the server ended the stream before a reply")
        return reply.tensor("activations_grad") if reply.frames else None

    def _requests(self, header: StepHeaderInfo, frames: list[TensorFrame]) -> Iterable[Any]:
        """The step's messages, as client.remote makes them (a hook for
        wire_step_costs.py)."""
        return step_upload_requests(header, frames, self.chunk_bytes)

    def close(self) -> None:
        try:
            self.call.finish()
        finally:
            self.link.close()

    def cancel(self) -> None:
        """Drop the stream without finishing it (after a refused step)."""
        self.link.close()


# ---------------------------------------------------------------- raw gRPC


def _identity(data: bytes) -> bytes:
    return data


def _drain(replies: Iterator[Any]) -> None:
    """The end of a stream whose requests are closed: its last reply, if any.
    A stream that failed raises its error here again; closing it must not
    replace the error that ended the run, so that is dropped."""
    with contextlib.suppress(grpc.RpcError, WireError):
        next(replies, None)


def _raw_echo(request_iterator, context) -> Iterator[bytes]:
    """Baseline: per step, take `up` bytes of raw messages, then send `down`
    bytes back as ready-made messages of `chunk` bytes (all from metadata).
    With "copies" = "1" (the copy floor), every message received is copied
    into one buffer of the step's size, and the reply's messages are cut from
    that buffer as it is sent, one copy each."""
    meta = dict(context.invocation_metadata())
    up, down, chunk = int(meta["up"]), int(meta["down"]), int(meta["chunk"])
    copies = meta.get("copies") == "1"
    reply = _messages(down, chunk)
    buf = memoryview(np.empty(up, dtype=np.uint8))
    received = 0
    for msg in request_iterator:
        if copies:
            buf[received : received + len(msg)] = msg
        received += len(msg)
        if received >= up:
            received = 0
            if copies:
                for start in range(0, down, chunk):
                    yield bytes(buf[start : min(start + chunk, down)])
            else:
                yield from reply


LEAN_PREFIX = bytes(range(0x20, 0x50))
"""What the minimal framework puts in front of every payload: as long as the
project's chunk prefix (envelope, tensor header, offset, data length)."""


def _join_pair(pair: tuple[bytes, memoryview]) -> bytes:
    """The minimal framework's serializer: prefix + payload, one copy."""
    return b"".join(pair)


def _lean_receive(msg: bytes, into: memoryview, at: int) -> int:
    """The minimal framework's receive: check the prefix, copy the payload to
    `at` of the step's buffer; the position after it."""
    if not msg.startswith(LEAN_PREFIX):
        raise ValueError("not a minimal-framework message")
    size = len(msg) - len(LEAN_PREFIX)
    into[at : at + size] = memoryview(msg)[len(LEAN_PREFIX) :]
    return at + size


def _lean_echo(request_iterator, context) -> Iterator[tuple[bytes, memoryview]]:
    """Server of the minimal framework (see LeanEcho): per step, receive the
    mask, labels and activations into one buffer, make the activations a
    tensor and the tensor's bytes the reply (the two torch calls a server
    needs), and send them back in chunk-sized messages."""
    meta = dict(context.invocation_metadata())
    up, acts, chunk = int(meta["up"]), int(meta["acts"]), int(meta["chunk"])
    buf = np.empty(up, dtype=np.uint8)
    view = memoryview(buf)
    received = 0
    for msg in request_iterator:
        received = _lean_receive(msg, view, received)
        if received >= up:
            received = 0
            tensor = torch.from_numpy(buf[up - acts :].view(np.float32).reshape(ECHO_SHAPE))
            grad = memoryview(tensor.numpy()).cast("B")
            for start in range(0, acts, chunk):
                yield LEAN_PREFIX, grad[start : start + chunk]


SINK_RESULT = StepResultInfo(round=0, step=0, loss=0.0, num_tokens=0, server_compute_s=0.0)
"""The reply the sink gives every step: an eval step's result, the same
fields as BenchServer's but for the step number (always 0)."""


def _sink(request_iterator, context) -> Iterator[bytes]:
    """A Train-like server that reads nothing (table d): the first message is
    answered with a welcome, then every `msgs` messages (metadata) with an eval
    step's result, both made once, as Train's serializer makes them. The
    project's client against it costs what the client's side of a step costs,
    with no server work beyond gRPC's."""
    msgs = int(dict(context.invocation_metadata())["msgs"])
    welcome = encode_train_response(
        TrainWelcomeInfo(client_id=0, scenario_hash="sink", max_tensor_bytes=2**30)
    )
    result = encode_train_response(SINK_RESULT)
    it = iter(request_iterator)
    if next(it, None) is None:
        return
    yield welcome
    count = 0
    for _ in it:
        count += 1
        if count == msgs:
            count = 0
            yield result


def _add_raw(server: grpc.Server, echo: Callable[..., Iterator[bytes]] = _raw_echo) -> None:
    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Echo": grpc.stream_stream_rpc_method_handler(echo, _identity, _identity),
            "Sink": grpc.stream_stream_rpc_method_handler(_sink, _identity, _identity),
            "Lean": grpc.stream_stream_rpc_method_handler(_lean_echo, _identity, _join_pair),
            "Probe": grpc.unary_unary_rpc_method_handler(
                lambda request, _context: request, _identity, _identity
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))


MESSAGE_TYPES: tuple[type, ...] = (bytes, memoryview, bytearray)


def message_types_taken(channel: grpc.Channel) -> dict[str, str]:
    """What the installed gRPC-Python takes from a serializer as a message, for
    each of MESSAGE_TYPES: "taken" (sent and echoed back intact) or the error it
    raised. The copy floor rests on this: while only `bytes` is taken, every
    message a framework sends from a tensor is a copy of it, since a `bytes`
    object holds its own data. Should a release take a buffer, the floor's
    copy out (and the project's) could go, and this line says so."""
    payload = bytes(range(16))
    verdicts: dict[str, str] = {}
    for kind in MESSAGE_TYPES:
        call = channel.unary_unary(
            "/bench.Raw/Probe", request_serializer=kind, response_deserializer=_identity
        )
        try:
            # A unary call serializes in the calling thread: a refusal raises here.
            echoed = call(payload, timeout=10)
        except (TypeError, ValueError) as err:
            verdicts[kind.__name__] = f"refused ({type(err).__name__}: {err})"
            continue
        verdicts[kind.__name__] = "taken" if echoed == payload else f"garbled: {echoed!r}"
    return verdicts


def _messages(num_bytes: int, chunk_bytes: int) -> list[bytes]:
    """Distinct ready-made messages covering `num_bytes` in `chunk_bytes` pieces."""
    data = torch.randn(num_bytes // 4 + 1).numpy().tobytes()[:num_bytes]
    return [data[i : i + chunk_bytes] for i in range(0, num_bytes, chunk_bytes)]


def _copy_span(span: tuple[memoryview, int, int]) -> bytes:
    """The floor's request serializer: the message's bytes, copied out of its source."""
    src, start, stop = span
    return bytes(src[start:stop])


class RawEcho:
    """A bidirectional stream of ready-made messages, step by step: `up`
    (the byte counts of the step's tensors, in the project's order, each cut
    into messages of the chunk size: two messages more than the project,
    which packs the small tensors with an activation chunk) out, `down` bytes
    back.

    copies=True is the copy floor: the same messages, but made the way any
    tensor has to be sent through gRPC-Python, whose messages are `bytes`:
    each is copied out of the step's buffers as it is sent, and each received
    is copied into a buffer of the step's size (the server does the same), so
    one copy per message on each side, and nothing else.

    wait=True waits for the reply as the sync project did (RequestQueue.
    wait_sent: not woken by every message sent); the default waits on
    gRPC's reply iterator at once, as a plain gRPC client does. The goals
    compare against the default; the other says how much of the project's
    lead over it is that wait alone."""

    def __init__(
        self,
        channel: grpc.Channel,
        up: list[int],
        down: int,
        chunk_bytes: int,
        copies: bool = False,
        wrap: Callable[[Callable[[Any], Any], str], Callable[[Any], Any]] = lambda fn, _: fn,
        wait: bool = False,
    ) -> None:
        """`wrap(fn, "request" or "reply")` is applied to the serializer and the
        deserializer (wire_timeline.py marks when each message passes)."""
        self.requests = rpc.RequestQueue()
        # The floor's copy out is its serializer's, on gRPC's sending thread, one
        # message at a time, as the sync project's was.
        call = channel.stream_stream(
            "/bench.Raw/Echo",
            request_serializer=wrap(_copy_span if copies else _identity, "request"),
            response_deserializer=wrap(_identity, "reply"),
        )
        metadata_ = (
            ("up", str(sum(up))),
            ("down", str(down)),
            ("chunk", str(chunk_bytes)),
            ("copies", "1" if copies else "0"),
        )
        self.responses = call(self.requests, timeout=600, metadata=metadata_)
        self.requests.watch(self.responses)
        self.copies = copies
        self.wait = wait
        sources = [memoryview(b"".join(_messages(n, chunk_bytes))) for n in up]
        # What each message is cut from: (source, start, stop).
        self.spans = [
            (src, i, min(i + chunk_bytes, len(src)))
            for src in sources
            for i in range(0, len(src), chunk_bytes)
        ]
        self.up = [bytes(src[a:b]) for src, a, b in self.spans]
        self.num_down = len(_messages(down, chunk_bytes))
        self.received = memoryview(np.empty(down, dtype=np.uint8))

    def run(self) -> None:
        # One batch per step, as the sync project put its steps (RequestQueue.put_all).
        if self.copies:
            self.requests.put_all(self.spans)
            if self.wait:
                self.requests.wait_sent()
            pos = 0
            for _ in range(self.num_down):
                msg = next(self.responses)
                self.received[pos : pos + len(msg)] = msg
                pos += len(msg)
            return
        self.requests.put_all(self.up)
        if self.wait:
            self.requests.wait_sent()
        for _ in range(self.num_down):
            next(self.responses)

    def close(self) -> None:
        self.requests.close()
        _drain(self.responses)


class AioRawEcho:
    """RawEcho's ready-made messages (copies=False) on a grpc.aio client, the
    transport the project's client runs on (fedsllm.wire.train_client's
    AioLink, its loop run only inside a step), against the same sync server:
    raw gRPC as the project's client now has it. Its messages are written
    one after the other and the reply read on the caller's thread, so there
    is no wait to choose as RawEcho has."""

    def __init__(self, address: str, up: list[int], down: int, chunk_bytes: int) -> None:
        self.link = AioLink(address)
        call = self.link.channel.stream_stream(
            "/bench.Raw/Echo", request_serializer=_identity, response_deserializer=_identity
        )
        metadata_ = (
            ("up", str(sum(up))),
            ("down", str(down)),
            ("chunk", str(chunk_bytes)),
            ("copies", "0"),
        )

        async def start() -> Any:
            return call(timeout=600, metadata=metadata_)

        self.call = self.link.run(start())
        self.up = [m for n in up for m in _messages(n, chunk_bytes)]
        self.num_down = len(_messages(down, chunk_bytes))

    async def _step(self) -> None:
        for msg in self.up:
            await self.call.write(msg)
        for _ in range(self.num_down):
            if await self.call.read() is grpc.aio.EOF:
                raise RuntimeError("the raw echo ended before its reply")

    def run(self) -> None:
        self.link.run(self._step())

    def close(self) -> None:
        async def finish() -> None:
            await self.call.done_writing()
            while await self.call.read() is not grpc.aio.EOF:
                pass

        try:
            self.link.run(finish())
        finally:
            self.link.close()


class LeanEcho:
    """A minimal tensor framework on the same gRPC, for the echo: the copy floor
    plus what any framework has to do besides framing, and nothing else: the
    six torch calls of a step (the client's three tensors to bytes, the
    server's activations to a tensor and its gradient back to bytes, the
    client's gradient to a tensor) and a prefix check per message, and the
    project's way of waiting for the reply (RawEcho's wait). No header,
    result, names, dtypes, shapes or offsets: it knows them in advance. It
    says how close to raw a framework written in Python can get here, so the
    project's own cost over it is its structure and its checks.

    It sends the same messages as RawEcho: the mask and labels as messages of
    their own, two more per step than the project, which packs them with the
    first activation chunk; so project / minimal errs in the project's
    favour. Built for the echo's tensors (ECHO_SHAPE float32 activations):
    `up` is the byte count of all three."""

    def __init__(self, channel: grpc.Channel, up: int, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.buf = np.empty(math.prod(ECHO_SHAPE) * 4, dtype=np.uint8)
        """The gradient's bytes (ECHO_SHAPE, float32), filled each step."""
        self.view = memoryview(self.buf)
        self.requests = rpc.RequestQueue()
        call = channel.stream_stream(
            "/bench.Raw/Lean", request_serializer=_join_pair, response_deserializer=_identity
        )
        metadata_ = (
            ("up", str(up)),
            ("acts", str(self.buf.nbytes)),
            ("chunk", str(chunk_bytes)),
        )
        self.responses = call(self.requests, timeout=600, metadata=metadata_)
        self.requests.watch(self.responses)

    def run_step(
        self, acts: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        messages = []
        for tensor in (mask, labels, acts):  # the project's order
            data = memoryview(tensor.numpy()).cast("B")
            for start in range(0, data.nbytes, self.chunk_bytes):
                messages.append((LEAN_PREFIX, data[start : start + self.chunk_bytes]))
        self.requests.put_all(messages)  # one batch per step, as the project
        self.requests.wait_sent()  # and the reply waited for as the project
        received = 0
        while received < self.buf.nbytes:
            received = _lean_receive(next(self.responses), self.view, received)
        return torch.from_numpy(self.buf.view(np.float32).reshape(ECHO_SHAPE))

    def close(self) -> None:
        self.requests.close()
        _drain(self.responses)


# ---------------------------------------------------------------- measurements


SINK_METHOD = "/bench.Raw/Sink"


def project_step_messages(
    num_bytes: int, chunk_bytes: int, step: int = 0
) -> tuple[bytes, list[bytes]]:
    """The hello and one eval step of table (a)'s upload of `num_bytes`, as
    the bytes a Session's serializer sends (encode_train_request of its
    StepParts): what the ready-made variants of table (d) send."""
    acts = torch.zeros(1, 2, num_bytes // 8)
    frames = [
        tensor_to_frame("attention_mask", torch.ones(1, 2, dtype=torch.int64)),
        tensor_to_frame("labels", torch.zeros(1, 2, dtype=torch.int64)),
        tensor_to_frame("activations", acts),
    ]
    header = StepHeaderInfo(
        round=0,
        step=step,
        mode="eval",
        downlink_bps=0.0,
        tensor_names=("attention_mask", "labels", "activations"),
    )
    hello = TrainHelloInfo(client_id=0, scenario_hash=f"{chunk_bytes}:0:1", wire_dtype="float32")
    steps = step_upload_requests(header, frames, chunk_bytes)
    return encode_train_request(hello), [encode_train_request(part) for part in steps]


class ReadyMade:
    """A client of ready-made messages (table d): `first` (a hello) once, then
    per step `step`'s messages, on `method` with gRPC's identity serializers,
    waiting for the step's one reply as the sync project did (RequestQueue.
    wait_sent) but reading it as bytes. Against the sink, it is raw gRPC with
    the project's message layout; against Train, the project's server alone."""

    def __init__(
        self,
        channel: grpc.Channel,
        method: str,
        first: bytes,
        step: list[bytes],
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.requests = rpc.RequestQueue()
        call = channel.stream_stream(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        self.responses = call(self.requests, timeout=600, metadata=metadata)
        self.requests.watch(self.responses)
        self.step = step
        self.requests.put(first)
        next(self.responses)  # a refusal ends the watched call, and with it gRPC's sender

    def run(self) -> bytes:
        self.requests.put_all(self.step)
        self.requests.wait_sent()
        return next(self.responses)

    def close(self) -> None:
        self.requests.close()
        _drain(self.responses)


SIDES = ("project", "client_alone", "server_alone", "packed", "raw", "raw_wait")
"""Table (d)'s variants: the project; its client against the sink; ready-made
project messages to the project's server; ready-made project messages to the
sink (raw gRPC with the project's layout); raw as in table (a); and raw
waiting for its reply as the project and packed do, which differs from
packed in its message count alone."""


def bench_sides(address: str, num_bytes: int, reps: int) -> dict[str, Timing]:
    """Table (d)'s figures for table (a)'s eval step of `num_bytes` at the
    default chunk size: SIDES, interleaved, each on its own channel."""
    acts = torch.randn(1, 2, num_bytes // 8)
    mask = torch.ones(1, 2, dtype=torch.int64)
    labels = torch.zeros(1, 2, dtype=torch.int64)
    hello, step = project_step_messages(num_bytes, DEFAULT_CHUNK)
    sink = (("msgs", str(len(step))),)
    with contextlib.ExitStack() as stack:
        project = Session(address, DEFAULT_CHUNK)
        stack.callback(project.close)
        client_alone = Session(
            address,
            DEFAULT_CHUNK,
            method=SINK_METHOD,
            metadata=sink,
        )
        stack.callback(client_alone.close)
        ready = {}
        for name, method, metadata_ in (
            ("server_alone", TRAIN_METHOD, ()),
            ("packed", SINK_METHOD, sink),
        ):
            channel = stack.enter_context(rpc.make_channel(address))
            ready[name] = ReadyMade(channel, method, hello, step, metadata_)
            stack.callback(ready[name].close)
        raws = _raw_variants(
            stack, address, [16, 16, num_bytes], 16, DEFAULT_CHUNK, ("raw", "raw_wait")
        )
        return _alternate(
            {
                "project": lambda: project.run_step(acts, mask, labels, "eval"),
                "client_alone": lambda: client_alone.run_step(acts, mask, labels, "eval"),
                "server_alone": ready["server_alone"].run,
                "packed": ready["packed"].run,
                **raws,
            },
            reps,
            warmup=5,
        )


def _server_cpu_s(pid: int | None) -> float:
    """CPU seconds the server process has used, every thread (ns resolution,
    from /proc/PID/task/*/schedstat); 0.0 for a server in this process."""
    if pid is None:
        return 0.0
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended since the listing
    return total / 1e9


SERVER_PID: int | None = None
"""The child server's pid (None: in process), for the CPU columns."""


@dataclass(frozen=True)
class Timing:
    """One function's figures over the interleaved repetitions."""

    wall_s: float
    """Median wall time of a repetition."""
    client_cpu_s: float
    """Mean CPU time of a repetition in this process (all its threads; with
    --in-process, the server's too)."""
    server_cpu_s: float
    """Mean CPU time of a repetition in the server's process (0 in process)."""
    walls_s: list[float]
    """Every repetition's wall time, in order (the i-th of every function ran in
    the same round, one after another)."""


def paired_ratio(num: Timing, den: Timing) -> str:
    """Median and interquartile range of num's over den's wall time, repetition
    by repetition: "1.18 (1.12-1.25)". Each pair ran in the same round, so
    drift on the host cancels in it; the range shows how far one run's ratio can be
    trusted (a figure inside it is not a difference)."""
    ratios = _paired_ratios(num, den)
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.2f}"
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{q2:.2f} ({q1:.2f}-{q3:.2f})"


def _paired_ratios(num: Timing, den: Timing) -> list[float]:
    """num's over den's wall time, repetition by repetition (same round)."""
    return [a / b for a, b in zip(num.walls_s, den.walls_s, strict=True)]


def paired_median(num: Timing, den: Timing) -> float:
    """The median of paired_ratio, as a number (wire_goals.py judges it)."""
    return statistics.median(_paired_ratios(num, den))


class ModelBetweenSteps:
    """What a client computes between two steps, stood in by a small torch
    model's forward and backward pass (two 1024 x 1024 linear layers on a
    batch of 4: about 16 MB of weights and gradients touched, 6.3 ms on one
    thread of the development machine). A real client's step starts with its caches full of the
    model's data, not the wire's; run before every timed repetition (and not
    timed), it starts every variant's step that way."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(1024, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024)
        )
        self.x = torch.randn(4, 1024, generator=generator)
        self.runs = 0

    def __call__(self) -> None:
        self.model.zero_grad(set_to_none=False)
        self.model(self.x).square().mean().backward()
        self.runs += 1


BETWEEN_STEPS: Callable[[], object] | None = None
"""Run before every timed repetition, untimed (--between-steps model:
ModelBetweenSteps); None: the repetitions follow each other at once."""


def _alternate(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, Timing]:
    """Each function's figures, repetitions interleaved (a load spike on a
    shared host hits every function alike). The CPU readings are taken
    outside the timed interval, and BETWEEN_STEPS runs before each timed
    repetition."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu = {name: [0.0, 0.0] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if BETWEEN_STEPS is not None:
                BETWEEN_STEPS()
            # Server first, so this process's reading excludes the /proc scan.
            s0 = _server_cpu_s(SERVER_PID)
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name][0] += time.process_time() - c0
            cpu[name][1] += _server_cpu_s(SERVER_PID) - s0
    return {
        name: Timing(statistics.median(ts), cpu[name][0] / reps, cpu[name][1] / reps, ts)
        for name, ts in times.items()
    }


RAW_KINDS: dict[str, dict[str, bool]] = {
    "raw": {},
    "floor": {"copies": True},
    "raw_wait": {"wait": True},
}
"""The RawEcho variants, by name: raw, the copy floor, raw waiting as the
sync project did."""
RAW_NAMES = (*RAW_KINDS, "raw_aio")
"""Every raw variant: RawEcho's, and raw on a grpc.aio client (AioRawEcho)."""


def _raw_variants(
    stack: contextlib.ExitStack,
    address: str,
    up: list[int],
    down: int,
    chunk_bytes: int,
    names: Sequence[str] = RAW_NAMES,
) -> dict[str, Callable[[], object]]:
    """The steps of "raw", "floor" (the copy floor), "raw_wait" (raw waiting
    for the reply as the sync project did) on RawEcho streams and "raw_aio"
    on an AioRawEcho (`up`, `down`), each closed by `stack` before its channel.
    Each has a channel of its own, as each project session has, so every
    channel sits idle alike between its steps
    (the raw variants once shared one, busy three steps in four or six, while
    the project's waited; whether that favoured them, the runs do not settle:
    a 1 KiB step read 123-194 us over raw in 5 runs with the shared channel,
    -18 to +239 us in 7 with a channel each)."""
    steps: dict[str, Callable[[], object]] = {}
    for name in names:
        if name == "raw_aio":
            echo: RawEcho | AioRawEcho = AioRawEcho(address, up, down, chunk_bytes)
        else:
            channel = stack.enter_context(rpc.make_channel(address))
            echo = RawEcho(channel, up, down, chunk_bytes, **RAW_KINDS[name])
        stack.callback(echo.close)
        steps[name] = echo.run
    return steps


def bench_stream(address: str, num_bytes: int, chunk_bytes: int, reps: int) -> dict[str, Timing]:
    """Figures of uploading one float32 tensor of `num_bytes` as a step:
    "project", "validated" (read with the main server's checks: finiteness,
    the mask's and labels' values, B and T bound across the three), "raw",
    "floor" (the copy floor) and "raw_wait" (raw waiting for the reply as
    the project does). The step is the smallest the main server accepts:
    batch 1, two tokens (with one, no label is left to predict once the loss
    shifts them), so the tensor is (1, 2, num_bytes / 8)."""
    acts = torch.randn(1, 2, num_bytes // 8)
    mask = torch.ones(1, 2, dtype=torch.int64)
    labels = torch.zeros(1, 2, dtype=torch.int64)
    small = mask.numel() * 8
    session = Session(address, chunk_bytes)
    checked = Session(address, chunk_bytes, validate=True, any_width=True)
    with contextlib.ExitStack() as stack:
        # The same messages up (the 16-byte mask and labels, then the tensor's
        # chunks) and one small reply.
        med = _alternate(
            {
                "project": lambda: session.run_step(acts, mask, labels, "eval"),
                "validated": lambda: checked.run_step(acts, mask, labels, "eval"),
                **_raw_variants(stack, address, [small, small, num_bytes], 16, chunk_bytes),
            },
            reps,
            warmup=2,
        )
    session.close()
    checked.close()
    return med


def bench_echo(
    address: str, chunk_bytes: int, reps: int, compare_fold: bool = False
) -> dict[str, Timing]:
    """One echo step's figures: "project" without and "validated" with
    validation, "raw", "floor" (the copy floor), "raw_wait" (raw waiting for
    the reply as the sync project did), "lean" (the minimal framework) and, with
    compare_fold, "other_fold" (the project with the downlink's result
    unfolded)."""
    acts = torch.randn(*ECHO_SHAPE)
    b, t = ECHO_SHAPE[:2]
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(0, VOCAB, (b, t))
    plain = Session(address, chunk_bytes, validate=False, fold=FOLD_DOWNLINK)
    checked = Session(address, chunk_bytes, validate=True, fold=FOLD_DOWNLINK)
    sessions = [plain, checked]
    sizes = [mask.numel() * 8, labels.numel() * 8, acts.numel() * 4]  # the project's order
    with contextlib.ExitStack() as stack:
        lean = LeanEcho(stack.enter_context(rpc.make_channel(address)), sum(sizes), chunk_bytes)
        stack.callback(lean.close)  # before its channel (last in, first out)
        if not torch.equal(lean.run_step(acts, mask, labels), acts):
            raise RuntimeError("the minimal framework's echo returned a different tensor")
        fns: dict[str, Callable[[], object]] = {
            "project": lambda: plain.run_step(acts, mask, labels, "train"),
            "validated": lambda: checked.run_step(acts, mask, labels, "train"),
            **_raw_variants(stack, address, sizes, sizes[2], chunk_bytes),
            "lean": lambda: lean.run_step(acts, mask, labels),
        }
        if compare_fold:
            other = Session(address, chunk_bytes, validate=False, fold=not FOLD_DOWNLINK)
            sessions.append(other)
            fns["other_fold"] = lambda: other.run_step(acts, mask, labels, "train")
        med = _alternate(fns, reps, warmup=5)
    for session in sessions:
        grad = session.run_step(acts, mask, labels, "train")
        if grad is None or not torch.equal(grad, acts):
            raise RuntimeError("echo returned a different tensor")
        session.close()
    return med


def bench_codec(num_bytes: int, chunk_bytes: int, reps: int) -> float:
    acts = torch.randn(num_bytes // 4)
    header = StepHeaderInfo(round=0, step=0, mode="eval", downlink_bps=0.0, tensor_names=("a",))
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        asm = ChunkAssembler()
        for part in step_upload_requests(header, [tensor_to_frame("a", acts)], chunk_bytes):
            got = decode_train_request(encode_train_request(part))  # as read_uplink feeds it
            asm.feed_laid(got.layout.chunks, got.buf, got.base)
        frame_to_tensor(asm.finish()["a"], copy=False)
        rates.append(num_bytes / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


class _Inbox:
    """An iterator over messages put into it: a reader fed step by step, in
    this process, as gRPC would feed it."""

    def __init__(self) -> None:
        self.items: collections.deque[Any] = collections.deque()

    def __iter__(self) -> _Inbox:
        return self

    def __next__(self) -> Any:
        return self.items.popleft()


STEP_STAGES = ("client builds", "server reads", "server replies", "client reads")


def bench_codec_step(chunk_bytes: int, reps: int, validate: bool) -> dict[str, float]:
    """One echo step's wire work without gRPC, median microseconds per stage:
    the client's step messages built (tensor_to_frame, step_upload_requests,
    the request serializer), the server's reading of them (deserializer,
    read_uplink, the activations as a tensor; with validate, the main
    server's specs and all three tensors, as BenchServer reads them), the
    server's reply built, the
    client's reading of it into the gradient. "copies" is the copy floor's
    share: one copy out and one copy in per message of the same sizes, both
    directions. The rest is what the framework's Python costs per step, the
    part of the echo's excess over the copy floor that is the project's own."""
    acts = torch.randn(*ECHO_SHAPE)
    b, t = ECHO_SHAPE[:2]
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(0, VOCAB, (b, t))
    names = ("attention_mask", "labels", "activations")
    uplink, downlink = _Inbox(), _Inbox()
    hello = TrainHelloInfo(client_id=0, scenario_hash="bench", wire_dtype="float32")
    uplink.items.append(decode_train_request(encode_train_request(hello)))
    server = read_uplink(uplink, lambda _header: _specs(validate))
    next(server)
    welcome = TrainWelcomeInfo(client_id=0, scenario_hash="bench", max_tensor_bytes=2**30)
    downlink.items.append(decode_train_response(encode_train_response(welcome)))
    grad_spec = TensorSpec("activations_grad", FLOATS, ECHO_SHAPE, require_finite=validate)
    client = read_downlink(downlink, lambda _result: [grad_spec])
    next(client)
    sizes = [mask.numel() * 8, labels.numel() * 8, acts.numel() * 4]
    sources = [memoryview(tensor.numpy()).cast("B") for tensor in (mask, labels, acts)]
    up_spans = [
        (src, i, min(i + chunk_bytes, n))
        for src, n in zip(sources, sizes, strict=True)
        for i in range(0, n, chunk_bytes)
    ]
    down_spans = [span for span in up_spans if span[0] is sources[2]]  # the gradient's
    into = memoryview(np.empty(sum(sizes), dtype=np.uint8))
    times: dict[str, list[float]] = {name: [] for name in (*STEP_STAGES, "copies")}
    for step in range(reps + 20):
        t0 = time.perf_counter()
        frames = [
            tensor_to_frame(name, tensor)
            for name, tensor in zip(names, (mask, labels, acts), strict=True)
        ]
        header = StepHeaderInfo(
            round=0, step=step, mode="train", downlink_bps=0.0, tensor_names=names
        )
        up = [
            encode_train_request(part) for part in step_upload_requests(header, frames, chunk_bytes)
        ]
        t1 = time.perf_counter()
        uplink.items.extend(decode_train_request(msg) for msg in up)
        upload = next(server)
        grad = upload.tensor("activations")
        if validate:  # the main server makes all three for the model
            upload.tensor("attention_mask")
            upload.tensor("labels")
        t2 = time.perf_counter()
        result = StepResultInfo(
            round=0,
            step=step,
            loss=0.0,
            num_tokens=0,
            server_compute_s=0.0,
            tensor_names=("activations_grad",),
        )
        reply = step_download_responses(
            result, [tensor_to_frame("activations_grad", grad)], chunk_bytes
        )
        down = [encode_train_response(part) for part in reply]
        t3 = time.perf_counter()
        downlink.items.extend(decode_train_response(msg) for msg in down)
        got = next(client).tensor("activations_grad")
        t4 = time.perf_counter()
        for spans in (up_spans, down_spans):  # as the project: a direction's messages, then read
            pos = 0
            for msg in [_copy_span(span) for span in spans]:
                into[pos : pos + len(msg)] = msg
                pos += len(msg)
        t5 = time.perf_counter()
        if step >= 20:  # warm-up: caches, layouts, receive buffers
            for name, dt in zip(
                (*STEP_STAGES, "copies"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
            ):
                times[name].append(dt)
    if not torch.equal(got, acts):
        raise RuntimeError("the in-process echo returned a different tensor")
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def bench_codec_step_table(reps: int) -> None:
    print(
        f"\n    one echo step's wire work in this process, no gRPC ({ECHO_SHAPE} fp32 + mask "
        f"+ labels up, the gradient down, {DEFAULT_CHUNK // 1024} KiB chunks), "
        f"median us of {reps}; copies = the copy floor's one copy out and in per message, both ways"
    )
    print("| validation | " + " | ".join(STEP_STAGES) + " | total | copies | total - copies |")
    print("|---|" + "---|" * (len(STEP_STAGES) + 3))
    for validate in (False, True):
        us = bench_codec_step(DEFAULT_CHUNK, reps, validate)
        total = sum(us[name] for name in STEP_STAGES)
        cells = " | ".join(f"{us[name]:.0f}" for name in STEP_STAGES)
        print(
            f"| {'on' if validate else 'off'} | {cells} | {total:.0f} | {us['copies']:.0f} | "
            f"{total - us['copies']:.0f} |"
        )


def _start_server(
    servicer: BenchServer | None = None, echo: Callable[..., Iterator[bytes]] = _raw_echo
) -> grpc.Server:
    """The benchmark server on a free loopback port (`server.bench_port`):
    `servicer` (a BenchServer by default) for Train, `echo` for the raw echo,
    and the minimal framework's echo."""
    server, port = rpc.create_server(
        "127.0.0.1:0",
        [
            lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(
                servicer or BenchServer(), s
            ),
            lambda s: _add_raw(s, echo),
        ],
        service_names=[rpc.MAIN_SERVER_SERVICE],
        allow_unauthenticated=True,  # loopback benchmark: no credentials
        max_workers=8,
    )
    server.bench_port = port  # type: ignore[attr-defined]
    return server


def start_child(
    script: str = __file__, cpu: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`script --serve` in a child process (a benchmark server that prints its
    port, then serves until its stdin closes): the child, and its address once
    it answers health checks. With `cpu`, the child runs on that CPU alone
    (pin_to_cpu, before it starts a thread). A child that fails to come up is
    killed by its own pid before the error is raised."""
    pin = ["--serve-cpu", str(cpu)] if cpu is not None else []
    child = subprocess.Popen(
        [sys.executable, script, "--serve", *pin],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = f"127.0.0.1:{int(child.stdout.readline())}"  # type: ignore[union-attr]
        rpc.wait_healthy(address, 10)
    except BaseException:
        child.kill()
        child.wait()
        raise
    return child, address


def stop_child(child: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    """Stop a child of start_child (or any child serving until its stdin
    closes): close its stdin, wait for it, and kill it by its own pid if it
    has not ended within `timeout_s`."""
    if child.stdin is not None:
        child.stdin.close()
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def scaled_reps(reps: Sequence[int], scale: float) -> tuple[int, int, int]:
    """(1.57 MB upload, 67 MB upload, echo) repetitions times `scale`, each
    at least 1."""
    small, big, echo = (max(1, round(r * scale)) for r in reps)
    return small, big, echo


def pin_to_cpu(cpu: int) -> None:
    """Run this process on `cpu` alone: every thread it has (numpy's or torch's
    workers, if any started on import), and every thread started after, which
    inherits its creator's CPU. Called before gRPC starts any."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except ProcessLookupError:  # a thread that ended since the listing
            continue


def _core(cpu: int) -> tuple[str, str] | None:
    """(package, core) of a CPU from sysfs; None where sysfs does not say."""
    base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
    try:
        with open(f"{base}/physical_package_id") as pkg, open(f"{base}/core_id") as core:
            return pkg.read().strip(), core.read().strip()
    except OSError:
        return None


def pinned_cpus() -> tuple[int, int]:
    """The client's and the server's CPU for --pin: the first this process may
    run on, and the next one on another core where there is one (two
    hyperthreads of one core share its caches and its pipeline)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f"--pin needs two CPUs; this process may run on {cpus}")
    first = _core(cpus[0])
    other = next((c for c in cpus[1:] if first is None or _core(c) != first), cpus[1])
    return cpus[0], other


def _serve(cpu: int | None = None) -> int:
    """Child mode: serve until stdin closes, after printing the port."""
    if cpu is not None:
        pin_to_cpu(cpu)
    torch.set_num_threads(1)
    server = _start_server()
    print(server.bench_port, flush=True)  # type: ignore[attr-defined]
    sys.stdin.read()
    rpc.stop_server(server, 0.5)
    return 0


def bench_stream_table(address: str, reps_small: int, reps_big: int) -> None:
    """Print table (a)."""
    print(
        "\n(a) tensor upload over gRPC, median MB/s; raw = the same bytes as a stream "
        f"of ready-made messages; goal ratio >= 0.9 at {DEFAULT_CHUNK // 1024} KiB; "
        "copy floor = raw plus the copy per message each side that bytes-only "
        "gRPC-Python messages force; raw, waiting as the project = raw with the "
        "sync project's wait for the reply, not woken by each message sent (see RawEcho); "
        "raw on aio = raw on a grpc.aio client, as the project's client (AioRawEcho)"
    )
    print(
        "| payload | chunk | project MB/s | raw MB/s | ratio | copy floor MB/s | of floor "
        "| paired ratio (IQR) | validated MB/s | validated ratio | validated paired (IQR) "
        "| raw, waiting as the project MB/s | of it | raw on aio MB/s | paired ratio to it (IQR) "
        "| validated, paired to it (IQR) | reps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_bytes, n in ((UPLOAD_BYTES, reps_small), (BIG_UPLOAD_BYTES, reps_big)):
        for chunk in CHUNK_SIZES:
            med = bench_stream(address, num_bytes, chunk, n)
            rate, checked, raw, floor, raw_wait, raw_aio = (
                num_bytes / med[k].wall_s / 1e6
                for k in ("project", "validated", "raw", "floor", "raw_wait", "raw_aio")
            )
            print(
                f"| {num_bytes / 1e6:.2f} MB | {chunk // 1024} KiB | {rate:.0f} | "
                f"{raw:.0f} | {rate / raw:.2f} | {floor:.0f} | {rate / floor:.2f} | "
                f"{paired_ratio(med['raw'], med['project'])} | {checked:.0f} | "
                f"{checked / raw:.2f} | {paired_ratio(med['raw'], med['validated'])} | "
                f"{raw_wait:.0f} | {rate / raw_wait:.2f} | {raw_aio:.0f} | "
                f"{paired_ratio(med['raw_aio'], med['project'])} | "
                f"{paired_ratio(med['raw_aio'], med['validated'])} | {n} |"
            )
    # What a step costs whatever its size: a 1 KiB tensor is one message up
    # (the raw stream's three), so the difference is the step's own handling.
    med = bench_stream(address, TINY_BYTES, DEFAULT_CHUNK, reps_small * 5)
    us = {k: t.wall_s * 1e6 for k, t in med.items()}
    cpu = {k: (t.client_cpu_s + t.server_cpu_s) * 1e6 for k, t in med.items()}
    print(
        f"    per-step cost (a {TINY_BYTES} B step, median of {reps_small * 5}): "
        f"project {us['project']:.0f} us, raw {us['raw']:.0f} us "
        f"({us['project'] - us['raw']:+.0f} us); CPU per step (mean), both processes: "
        f"project {cpu['project']:.0f} us, raw {cpu['raw']:.0f} us "
        f"({cpu['project'] - cpu['raw']:+.0f} us)"
    )


def bench_sides_table(address: str, reps: int) -> None:
    """Print table (d)."""
    print(
        f"\n(d) where a step's time goes, by side: table (a)'s eval step at "
        f"{DEFAULT_CHUNK // 1024} KiB, median us of {reps}; packed = raw gRPC carrying "
        "the project's own messages (ready-made, waiting as the project) to a server "
        "that reads nothing; client alone = the project's client against that server; "
        "server alone = the packed messages to the project's server. Each excess is "
        "over packed, paired step by step; raw = table (a)'s, two messages more than "
        "packed; raw waiting = raw waiting for its reply as packed does, so its excess "
        "over packed is what two more messages cost"
    )
    print(
        "| payload | messages | project | raw | packed | client alone | server alone "
        "| client excess | server excess | project excess | raw waiting, excess "
        "| project / raw (paired) | CPU us, client + server: project | packed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_bytes in (TINY_BYTES, UPLOAD_BYTES):
        med = bench_sides(address, num_bytes, reps)
        us = {k: t.wall_s * 1e6 for k, t in med.items()}
        excess = {
            k: _paired_excess_us(med[k], med["packed"])
            for k in ("project", "client_alone", "server_alone", "raw_wait")
        }
        cpu = {
            k: f"{t.client_cpu_s * 1e6:.0f} + {t.server_cpu_s * 1e6:.0f}" for k, t in med.items()
        }
        size = f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 10**6 else f"{num_bytes} B"
        print(
            f"| {size} | {len(project_step_messages(num_bytes, DEFAULT_CHUNK)[1])} | "
            + " | ".join(f"{us[k]:.0f}" for k in ("project", "raw", "packed"))
            + f" | {us['client_alone']:.0f} | {us['server_alone']:.0f} | "
            + " | ".join(
                f"{excess[k]:+.0f}" for k in ("client_alone", "server_alone", "project", "raw_wait")
            )
            + f" | {paired_ratio(med['project'], med['raw'])} | {cpu['project']} "
            f"| {cpu['packed']} |"
        )


def _paired_excess_us(num: Timing, den: Timing) -> float:
    """Median of num's minus den's wall time, repetition by repetition, us."""
    return statistics.median(a - b for a, b in zip(num.walls_s, den.walls_s, strict=True)) * 1e6


def bench_echo_table(address: str, reps_echo: int, compare_fold: bool) -> None:
    """Print table (b)."""
    print(
        f"\n(b) activation echo round trip, {ECHO_SHAPE} fp32 + mask + labels up, the "
        f"same-size gradient down, median of {reps_echo}; goal project / raw <= 1.2; "
        "copy floor = raw plus one copy per message on each side"
    )
    print(
        "| chunk | project ms | validated ms | raw echo ms | ratio | validated ratio "
        "| copy floor ms | project / floor | validated / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    cpu_rows = []
    for chunk in (DEFAULT_CHUNK, 2**20):
        med = bench_echo(address, chunk, reps_echo, compare_fold)
        raw = med["raw"].wall_s
        if "other_fold" in med:
            other = med["other_fold"].wall_s
            print(
                f"   (downlink result {'unfolded' if FOLD_DOWNLINK else 'folded'}: "
                f"{other * 1e3:.2f} ms, ratio {other / raw:.2f})"
            )
        project, validated = med["project"].wall_s, med["validated"].wall_s
        floor = med["floor"].wall_s
        print(
            f"| {chunk // 1024} KiB | {project * 1e3:.2f} | {validated * 1e3:.2f} | "
            f"{raw * 1e3:.2f} | {project / raw:.2f} | {validated / raw:.2f} | "
            f"{floor * 1e3:.2f} | {project / floor:.2f} | {validated / floor:.2f} |"
        )
        cpu_rows.append((chunk, med))
    print("\n    paired ratios to raw, step by step: median (interquartile range)")
    print(
        "| chunk | project / raw | validated / raw | copy floor / raw | minimal / raw "
        "| project / raw waiting as the project | project / raw on aio "
        "| validated / raw on aio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for chunk, med in cpu_rows:
        print(
            f"| {chunk // 1024} KiB | "
            + " | ".join(
                paired_ratio(med[k], med["raw"]) for k in ("project", "validated", "floor", "lean")
            )
            + f" | {paired_ratio(med['project'], med['raw_wait'])}"
            + f" | {paired_ratio(med['project'], med['raw_aio'])}"
            + f" | {paired_ratio(med['validated'], med['raw_aio'])} |"
        )
    print(
        "\n    the minimal framework (LeanEcho: the copy floor, the six torch calls of a "
        "step and a prefix check per message; how close to raw Python can get here)"
    )
    print("| chunk | minimal ms | minimal / raw | project / minimal | validated / minimal |")
    print("|---|---|---|---|---|")
    for chunk, med in cpu_rows:
        lean = med["lean"].wall_s
        print(
            f"| {chunk // 1024} KiB | {lean * 1e3:.2f} | {lean / med['raw'].wall_s:.2f} | "
            f"{med['project'].wall_s / lean:.2f} | {med['validated'].wall_s / lean:.2f} |"
        )
    # Where the wall time goes: on a host with few cores the processes' CPU
    # time, gRPC's threads included, bounds a step's wall time.
    print(
        "\n    CPU per echo step, ms (mean; client process + server process, every "
        "thread; the extra over raw is the framework's)"
    )
    print(
        "| chunk | project | validated | raw | copy floor | minimal | project extra "
        "| validated extra | project over floor | project over minimal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for chunk, med in cpu_rows:
        total = {k: (t.client_cpu_s + t.server_cpu_s) * 1e3 for k, t in med.items()}
        parts = {
            k: f"{total[k]:.2f} ({t.client_cpu_s * 1e3:.2f} + {t.server_cpu_s * 1e3:.2f})"
            for k, t in med.items()
        }
        print(
            f"| {chunk // 1024} KiB | {parts['project']} | {parts['validated']} | "
            f"{parts['raw']} | {parts['floor']} | {parts['lean']} | "
            f"{total['project'] - total['raw']:+.2f} | "
            f"{total['validated'] - total['raw']:+.2f} | "
            f"{total['project'] - total['floor']:+.2f} | "
            f"{total['project'] - total['lean']:+.2f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--reps-scale",
        type=float,
        default=1.0,
        help="multiply every repetition count (default 1.0)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the server in this process (default: a child process)",
    )
    parser.add_argument(
        "--only",
        choices=("stream", "sides", "echo", "codec"),
        help="run one part only (default: all)",
    )
    parser.add_argument(
        "--compare-fold",
        action="store_true",
        help="also time the echo with the downlink's result folded the other way",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run this process on one CPU and the server's on another (less noise; "
        "each process's Python then shows in full, as none of its threads runs beside "
        "another; the goals are judged unpinned)",
    )
    parser.add_argument(
        "--between-steps",
        choices=("nothing", "model"),
        default="nothing",
        help="what runs before every timed repetition: nothing (the default, the "
        "steps back to back), or a small model's forward and backward pass, as a "
        "client computes between steps, so every step starts after a model's compute",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-cpu", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        return _serve(ns.serve_cpu)
    if ns.pin and ns.in_process:
        parser.error("--pin: the server runs in a child process, not with --in-process")
    client_cpu, server_cpu = pinned_cpus() if ns.pin else (None, None)
    if client_cpu is not None:
        pin_to_cpu(client_cpu)
    torch.set_num_threads(1)
    global BETWEEN_STEPS
    BETWEEN_STEPS = ModelBetweenSteps() if ns.between_steps == "model" else None
    reps = (10, 5, 20) if ns.quick else DEFAULT_REPS
    reps_small, reps_big, reps_echo = scaled_reps(reps, ns.reps_scale)

    print("# wire throughput benchmark")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"host: {platform.node()} {platform.machine()} {platform.processor() or ''} "
        f"cpus={os.cpu_count()} python={sys.version.split()[0]}"
    )
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("grpcio", "protobuf", "torch", "numpy")
    )
    print(f"packages: {versions}")
    print(
        f"load average at start: {os.getloadavg()[0]:.2f} (other work on the host skews "
        "every figure; project and raw repetitions alternate)"
    )
    print("scenario: none (wire layer only, loopback, unshaped)")
    print(f"server: {'same process' if ns.in_process else 'child process'}")
    print(
        f"pinned: client on CPU {client_cpu}, server on CPU {server_cpu}"
        if ns.pin
        else "pinned: no (the scheduler places every thread)"
    )
    print(
        "between steps: "
        + (
            "a small model's forward and backward pass (ModelBetweenSteps), untimed"
            if BETWEEN_STEPS is not None
            else "nothing (each timed repetition follows the last at once)"
        )
    )

    child: subprocess.Popen[str] | None = None
    server: grpc.Server | None = None
    if ns.in_process:
        server = _start_server()
        port = server.bench_port  # type: ignore[attr-defined]
        address = f"127.0.0.1:{port}"
        rpc.wait_healthy(address, 10)
    else:  # healthy once start_child returns
        child, address = start_child(cpu=server_cpu)
        global SERVER_PID
        SERVER_PID = child.pid
    try:
        with rpc.make_channel(address) as channel:
            taken = message_types_taken(channel)
        print(
            "messages gRPC-Python takes from a serializer (what the copy floor rests on): "
            + "; ".join(f"{kind} {verdict}" for kind, verdict in taken.items())
        )
        if ns.only in (None, "stream"):
            bench_stream_table(address, reps_small, reps_big)
        if ns.only in (None, "sides"):
            bench_sides_table(address, reps_echo)
        if ns.only in (None, "echo"):
            bench_echo_table(address, reps_echo, ns.compare_fold)
    finally:
        if server is not None:
            rpc.stop_server(server, 0.5)
        if child is not None:
            stop_child(child)
    if ns.only in (None, "codec"):
        print("\n(c) codec alone (encode, chunk, frame, validate, assemble, decode), median MB/s")
        for chunk in CHUNK_SIZES:
            print(
                f"   64 MiB, {chunk // 1024:>5} KiB chunks: "
                f"{bench_codec(64 * 2**20, chunk, reps_big):.0f} MB/s"
            )
        bench_codec_step_table(reps_echo * 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
