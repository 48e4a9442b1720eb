"""The Train codec on grpc.aio: would an event loop (one Python thread per
process, no hand-off between gRPC's threads and the handler's) bring the
activation echo closer to raw gRPC than the sync API the roles use today?

    OMP_NUM_THREADS=1 python benchmarks/wire_aio.py [--reps N]

Five echoes of the same step, in one client process, each server in a child
process:

- "aio project": the project's wire code (fedsllm.wire.train builders,
  codec, readers' assembler) on grpc.aio on both ends: StepPart messages up,
  ReplyPart messages down, decoded to a tensor;
- "aio raw": ready-made byte messages of the same sizes on grpc.aio;
- "sync project": the project's client as it was on the sync API
  (SyncSession, kept here as the reference: the client has since moved to
  grpc.aio, fedsllm.wire.train_client, on what this benchmark measured);
- "sync raw": benchmarks/wire_throughput.py's raw echo (the sync API, the
  goal of issue 13's reference);
- "aio client, sync server": the same client code as "aio project"
  (AioClient) against the sync server's Train method (wire_throughput's
  BenchServer): the client alone moved to grpc.aio, the server as the main
  server is today.

And table (a)'s 1.57 MB upload (an eval step answered by its result) to the
sync server from the aio client, the sync project and sync raw, each client
on a stream and channel of its own. Every repetition runs the eight variants
in a rotated order, so none always follows the same one.

It prints the medians and these ratios: the framework over its own transport
(aio project / aio raw, sync project / sync raw); aio project / sync raw
(both roles on grpc.aio against today's baseline); the aio client's echo
time over the sync project's, paired step by step; and each upload's rate
over sync raw's, paired (for the aio client, its transport's own gain is in
that figure, as the goals compare against sync raw). AioClient is the
project's wire code written for grpc.aio here, inside this benchmark's one
event loop (fedsllm.wire.train_client's TrainCall runs on a loop of its own, so
it cannot run inside another). The chunk size is the scenario default (256
KiB); validation is off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import torch
import wire_throughput as wt

from fedsllm.wire import rpc
from fedsllm.wire.messages import (
    StepHeaderInfo,
    StepResultInfo,
    TrainHelloInfo,
    TrainWelcomeInfo,
    step_header_from_proto,
)
from fedsllm.wire.tensors import (
    ChunkAssembler,
    ReceiveBuffers,
    TensorSpec,
    frame_to_tensor,
    tensor_to_frame,
)
from fedsllm.wire.train import (
    TRAIN_METHOD,
    DownlinkReader,
    decode_train_request,
    decode_train_response,
    encode_train_request,
    encode_train_response,
    read_downlink,
    step_download_responses,
    step_upload_requests,
    train_call,
)

CHUNK = wt.DEFAULT_CHUNK


def _sizes() -> list[int]:
    """Bytes of the step's tensors, in wt.STEP_NAMES order: mask, labels, activations."""
    b, t, d = wt.ECHO_SHAPE
    return [b * t * 8, b * t * 8, b * t * d * 4]


async def _project_echo(request_iterator: AsyncIterator, _context) -> AsyncIterator:
    """Welcome the client's hello, as Train does; then assemble each step as the
    main server does and echo the activations."""
    buffers = ReceiveBuffers()
    specs = {s.name: s for s in wt._specs(False)}
    assembler: ChunkAssembler | None = None
    header: StepHeaderInfo | None = None
    messages = aiter(request_iterator)
    await anext(messages)  # the hello
    yield TrainWelcomeInfo(client_id=0, scenario_hash="aio", max_tensor_bytes=2**30)
    async for msg in messages:  # ReceivedParts, fed as the readers feed them
        if msg.head is not None:
            header = step_header_from_proto(msg.head)
            assembler = ChunkAssembler(specs=specs, buffers=buffers)
        assembler.feed_laid(msg.layout.chunks, msg.buf, msg.base)  # type: ignore[union-attr]
        if msg.end:
            frames = assembler.finish(header.tensor_names)  # type: ignore[union-attr]
            acts = frame_to_tensor(frames["activations"], copy=False)
            result = StepResultInfo(
                round=0,
                step=header.step,  # type: ignore[union-attr]
                loss=0.0,
                num_tokens=0,
                server_compute_s=0.0,
                tensor_names=("activations_grad",),
            )
            grad = tensor_to_frame("activations_grad", acts)
            for reply in step_download_responses(result, [grad], CHUNK):
                yield reply


async def _raw_echo(request_iterator: AsyncIterator, _context) -> AsyncIterator:
    up, reply = sum(_sizes()), wt._messages(_sizes()[2], CHUNK)
    received = 0
    async for msg in request_iterator:
        received += len(msg)
        if received >= up:
            received = 0
            for out in reply:
                yield out


async def _serve() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Aio",
        {
            "Project": grpc.stream_stream_rpc_method_handler(
                _project_echo, decode_train_request, encode_train_response
            ),
            "Raw": grpc.stream_stream_rpc_method_handler(_raw_echo, wt._identity, wt._identity),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0.5)


def _child(script: str) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, script, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return child, int(child.stdout.readline())  # type: ignore[union-attr]


class SyncSession:
    """The project's client as it was on the sync API before it moved to
    grpc.aio (fedsllm.wire.train_client), kept here as the reference this
    benchmark measured the move against: a step's parts go into a
    RequestQueue that gRPC's sending thread drains (encoding each there),
    and the reply comes through read_downlink on gRPC's response iterator."""

    def __init__(self, address: str, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.channel = rpc.make_channel(address)
        self.requests = rpc.RequestQueue()
        stream = train_call(self.channel)(self.requests, timeout=600)
        self.requests.watch(stream)
        specs = [TensorSpec("activations_grad", wt.FLOATS)]
        self.downlink = read_downlink(stream, lambda _result: specs)
        hello = TrainHelloInfo(
            client_id=0, scenario_hash=f"{chunk_bytes}:0:1", wire_dtype="float32"
        )
        self.requests.put(encode_train_request(hello))
        next(self.downlink)
        self.step = 0

    def run_step(
        self, acts: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, mode: str
    ) -> torch.Tensor | None:
        header, frames = wt.step_of(self.step, mode, acts, mask, labels)
        self.step += 1
        self.requests.put_all(step_upload_requests(header, frames, self.chunk_bytes))
        self.requests.wait_sent()  # as the sync client waited for its reply
        reply = next(self.downlink)
        return reply.tensor("activations_grad") if reply.frames else None

    def close(self) -> None:
        self.requests.close()
        try:
            for _ in self.downlink:
                pass
        finally:
            self.channel.close()


class AioClient:
    """The project's client on one grpc.aio Train stream, inside this
    benchmark's event loop: a step's StepParts written, its reply fed to the
    client's own DownlinkReader (fedsllm.wire.train), as TrainCall feeds it."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        specs = [TensorSpec("activations_grad", wt.FLOATS)]
        self.reader = DownlinkReader(lambda _result: specs)
        self.step = 0

    @classmethod
    async def open(cls, channel: grpc.aio.Channel, method: str = TRAIN_METHOD) -> AioClient:
        """A client of `method` (a sync server's Train by default), after its hello."""
        call = channel.stream_stream(
            method,
            request_serializer=encode_train_request,
            response_deserializer=decode_train_response,
        )(timeout=600)
        client = cls(call)
        await call.write(
            TrainHelloInfo(client_id=0, scenario_hash=f"{CHUNK}:0:1", wire_dtype="float32")
        )
        client.reader.feed(await client._read())  # a welcome, or it raises
        return client

    async def _read(self) -> Any:
        reply = await self.call.read()
        if reply is grpc.aio.EOF:
            raise RuntimeError(f"the stream ended ({await self.call.code()}) before a reply")
        return reply

    async def run_step(
        self, tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor], mode: str
    ) -> torch.Tensor | None:
        """One step of (activations, mask, labels): the gradient of a train
        step, None for an eval step (answered by its result alone)."""
        acts, mask, labels = tensors
        header, frames = wt.step_of(self.step, mode, acts, mask, labels)
        self.step += 1
        for part in step_upload_requests(header, frames, CHUNK):
            await self.call.write(part)
        while (reply := self.reader.feed(await self._read())) is None:
            pass
        return reply.tensors.get("activations_grad")

    async def close(self) -> None:
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:
            pass


async def _measure(aio_port: int, sync_port: int, reps: int) -> dict[str, float]:
    acts = torch.randn(*wt.ECHO_SHAPE)
    b, t = wt.ECHO_SHAPE[:2]
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(0, wt.VOCAB, (b, t))
    echo = (acts, mask, labels)
    # Table (a)'s 1.57 MB upload: an eval step, answered by its result.
    upload = (
        torch.randn(1, 2, wt.UPLOAD_BYTES // 8),
        torch.ones(1, 2, dtype=torch.int64),
        torch.zeros(1, 2, dtype=torch.int64),
    )
    raw_up = [m for n in _sizes() for m in wt._messages(n, CHUNK)]
    raw_down = len(wt._messages(_sizes()[2], CHUNK))
    address = f"127.0.0.1:{sync_port}"
    rpc.wait_healthy(address, 10)
    options = list(rpc.CHANNEL_OPTIONS)
    async with contextlib.AsyncExitStack() as stack:

        async def aio_channel(target: str) -> grpc.aio.Channel:
            channel = grpc.aio.insecure_channel(target, options=options)
            stack.push_async_callback(channel.close)
            return channel

        def sync(make: Callable[[], Any]) -> Any:
            made = make()
            stack.callback(made.close)
            return made

        aio_server = await aio_channel(f"127.0.0.1:{aio_port}")
        project = await AioClient.open(aio_server, "/bench.Aio/Project")
        raw = aio_server.stream_stream(
            "/bench.Aio/Raw", request_serializer=wt._identity, response_deserializer=wt._identity
        )(timeout=600)
        stack.callback(raw.cancel)
        # The client alone on grpc.aio, against the sync server's Train
        # (wire_throughput's BenchServer): a stream, on a channel of its own,
        # for the echo and another for the upload, as the sync variants have.
        aio_client = await AioClient.open(await aio_channel(address))
        aio_client_upload = await AioClient.open(await aio_channel(address))
        sync_channel = sync(lambda: rpc.make_channel(address))
        sync_raw = sync(lambda: wt.RawEcho(sync_channel, _sizes(), _sizes()[2], CHUNK))
        sync_project = sync(lambda: SyncSession(address, CHUNK))
        upload_channel = sync(lambda: rpc.make_channel(address))
        upload_raw = sync(lambda: wt.RawEcho(upload_channel, [16, 16, wt.UPLOAD_BYTES], 16, CHUNK))
        upload_project = sync(lambda: SyncSession(address, CHUNK))

        async def aio_raw() -> None:
            for msg in raw_up:
                await raw.write(msg)
            for _ in range(raw_down):
                await raw.read()

        async def run_sync(fn: Callable[[], object]) -> None:
            fn()

        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "aio project": lambda: project.run_step(echo, "train"),
            "aio raw": aio_raw,
            "sync project": lambda: run_sync(lambda: sync_project.run_step(*echo, "train")),
            "sync raw": lambda: run_sync(sync_raw.run),
            "aio client, sync server": lambda: aio_client.run_step(echo, "train"),
            "upload: aio client, sync server": lambda: aio_client_upload.run_step(upload, "eval"),
            "upload: sync project": lambda: run_sync(
                lambda: upload_project.run_step(*upload, "eval")
            ),
            "upload: sync raw": lambda: run_sync(upload_raw.run),
        }
        names = list(variants)
        for _ in range(10):
            for fn in variants.values():
                await fn()
        for client in (project, aio_client):
            if not torch.equal(await client.run_step(echo, "train"), acts):
                raise RuntimeError("the aio echo returned a different tensor")
        times: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(reps):
            # Each variant takes every place in the order in turn, so none
            # always follows the same one (a stream just used by another
            # variant starts warmer than one idle since the last round).
            turn = rep % len(names)
            for name in names[turn:] + names[:turn]:
                t0 = time.perf_counter()
                await variants[name]()
                times[name].append(time.perf_counter() - t0)
        for client in (project, aio_client, aio_client_upload):
            await client.close()
        await raw.done_writing()

    timings = {name: wt.Timing(statistics.median(ts), 0.0, 0.0, ts) for name, ts in times.items()}

    def paired(num: str, den: str) -> float:
        return wt.paired_median(timings[num], timings[den])

    med = {name: t.wall_s for name, t in timings.items()}
    med["aio client / sync project, paired"] = paired("aio client, sync server", "sync project")
    # Rates against sync raw's, raw's time over the client's, as table (a)
    # reads them; for the aio client, its transport's own gain included.
    med["upload: aio client rate / raw"] = paired(
        "upload: sync raw", "upload: aio client, sync server"
    )
    med["upload: sync project rate / raw"] = paired("upload: sync raw", "upload: sync project")
    return med


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300, help="steps per variant (default 300)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    if ns.serve:
        asyncio.run(_serve())
        return 0
    print("# Train codec on grpc.aio against raw aio and sync echoes")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, grpcio {grpc.__version__}")
    aio_child, aio_port = _child(__file__)
    sync_child, sync_port = _child(wt.__file__)
    try:
        med = asyncio.run(_measure(aio_port, sync_port, ns.reps))
    finally:
        for child in (aio_child, sync_child):
            wt.stop_child(child)
    print(f"\n{wt.ECHO_SHAPE} fp32 echo at {CHUNK // 1024} KiB chunks, median of {ns.reps}")
    cols = ("aio project", "aio raw", "sync project", "sync raw", "aio client, sync server")
    print("| " + " | ".join(f"{k} ms" for k in cols) + " |")
    print("|---|---|---|---|---|")
    print("| " + " | ".join(f"{med[k] * 1e3:.2f}" for k in cols) + " |")
    print(
        f"\naio project / aio raw {med['aio project'] / med['aio raw']:.2f}; "
        f"sync project / sync raw {med['sync project'] / med['sync raw']:.2f}; "
        f"aio project / sync raw {med['aio project'] / med['sync raw']:.2f}"
    )
    print(
        "the client alone on grpc.aio, against the sync server: "
        f"{med['aio client, sync server'] / med['sync raw']:.2f}x sync raw; "
        f"{med['aio client / sync project, paired']:.3f} of the sync project's time, paired "
        "step by step (the project's wire code on a grpc.aio client, the server unchanged)"
    )
    print(
        f"table (a)'s {wt.UPLOAD_BYTES / 1e6:.2f} MB upload to the sync server, rate over sync "
        f"raw's (paired): the client on grpc.aio {med['upload: aio client rate / raw']:.3f}, "
        f"the sync project {med['upload: sync project rate / raw']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
