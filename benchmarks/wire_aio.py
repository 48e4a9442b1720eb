"""The Train codec on grpc.aio: would an event loop (one Python thread per
process, no hand-off between gRPC's threads and the handler's) bring the
activation echo closer to raw gRPC than the sync API the roles use today?

    OMP_NUM_THREADS=1 python benchmarks/wire_aio.py [--reps N]

Five echoes of the same step, interleaved step by step in one client process,
each server in a child process:

- "aio project": the project's wire code (fedsllm.wire.train builders,
  codec, readers' assembler) on grpc.aio on both ends: StepPart messages up,
  ReplyPart messages down, decoded to a tensor;
- "aio raw": ready-made byte messages of the same sizes on grpc.aio;
- "sync project" and "sync raw": benchmarks/wire_throughput.py's project
  session and raw echo (the sync API, as the roles and the goal of issue 13
  use it);
- "aio client, sync server": the aio project's client against the sync
  server's Train method (wire_throughput's BenchServer): the client alone
  moved to grpc.aio, a smaller change than both roles.

It prints the medians and four ratios: the framework over its own transport
(aio project / aio raw, sync project / sync raw), aio project / sync raw
(what moving the roles to grpc.aio would give against today's baseline),
and the aio client's time over the sync project's, paired step by step.
Alternated with them, table (a)'s 1.57 MB upload (an eval step answered by
its result) from the aio client, the sync project and sync raw to the sync
server: each client's rate over raw's, paired, as table (a) reads it.
The chunk size is the scenario default (256 KiB); validation is off.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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
    step_result_from_proto,
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
    ReceivedResult,
    decode_train_request,
    decode_train_response,
    encode_train_request,
    encode_train_response,
    parse_train_response,
    step_download_responses,
    step_upload_requests,
)

CHUNK = wt.DEFAULT_CHUNK
NAMES = ("attention_mask", "labels", "activations")


def _sizes() -> list[int]:
    """Bytes of the step's tensors, in NAMES order: mask, labels, activations."""
    b, t, d = wt.ECHO_SHAPE
    return [b * t * 8, b * t * 8, b * t * d * 4]


async def _project_echo(request_iterator: AsyncIterator, _context) -> AsyncIterator:
    """Assemble each step as the main server does and echo the activations."""
    buffers = ReceiveBuffers()
    specs = {s.name: s for s in wt._specs(False)}
    assembler: ChunkAssembler | None = None
    header: StepHeaderInfo | None = None
    async for msg in request_iterator:  # ReceivedParts, fed as the readers feed them
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


async def _measure(aio_port: int, sync_port: int, reps: int) -> dict[str, float]:
    acts = torch.randn(*wt.ECHO_SHAPE)
    b, t = wt.ECHO_SHAPE[:2]
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(0, wt.VOCAB, (b, t))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{aio_port}")
    project = channel.stream_stream(
        "/bench.Aio/Project",
        request_serializer=encode_train_request,
        response_deserializer=decode_train_response,
    )()
    raw = channel.stream_stream(
        "/bench.Aio/Raw", request_serializer=wt._identity, response_deserializer=wt._identity
    )()
    buffers = ReceiveBuffers()
    grad_spec = {"activations_grad": TensorSpec("activations_grad", wt.FLOATS)}
    raw_up = [m for n in _sizes() for m in wt._messages(n, CHUNK)]
    raw_down = len(wt._messages(_sizes()[2], CHUNK))
    step = 0

    async def aio_step(
        call: grpc.aio.StreamStreamCall,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        mode: str,
    ) -> torch.Tensor | None:
        """One step of (activations, mask, labels) on `call`: the gradient of
        a train step, None for an eval step (answered by its result alone)."""
        nonlocal step
        step_acts, step_mask, step_labels = tensors
        frames = [
            tensor_to_frame("attention_mask", step_mask),
            tensor_to_frame("labels", step_labels),
            tensor_to_frame("activations", step_acts),
        ]
        header = StepHeaderInfo(round=0, step=step, mode=mode, downlink_bps=0.0, tensor_names=NAMES)
        step += 1
        for part in step_upload_requests(header, frames, CHUNK):
            await call.write(part)
        # The result is read as the sync client's read_downlink reads it
        # (step_result_from_proto), so both clients do the same work.
        if mode == "eval":
            reply = await call.read()
            if type(reply) is not ReceivedResult:
                raise RuntimeError(f"an eval step was answered by {type(reply).__name__}")
            step_result_from_proto(reply.fields)
            return None
        assembler = ChunkAssembler(specs=grad_spec, buffers=buffers)
        while "activations_grad" not in assembler.frames:
            reply = await call.read()
            if reply.head is not None:
                step_result_from_proto(reply.head)
            assembler.feed_laid(reply.layout.chunks, reply.buf, reply.base)
        return frame_to_tensor(assembler.frames["activations_grad"], copy=False)

    async def aio_echo(call: grpc.aio.StreamStreamCall) -> torch.Tensor | None:
        return await aio_step(call, (acts, mask, labels), "train")

    async def aio_project() -> torch.Tensor:
        return await aio_echo(project)

    async def aio_raw() -> None:
        for msg in raw_up:
            await raw.write(msg)
        for _ in range(raw_down):
            await raw.read()

    address = f"127.0.0.1:{sync_port}"
    rpc.wait_healthy(address, 10)
    sync_channel = rpc.make_channel(address)
    sync_raw = wt.RawEcho(sync_channel, _sizes(), _sizes()[2], CHUNK)
    sync_project = wt.Session(address, CHUNK)
    # The client alone on grpc.aio: the same step against the sync server's
    # Train (wire_throughput's BenchServer), after its hello.
    to_sync = grpc.aio.insecure_channel(address)
    client_only = to_sync.stream_stream(
        TRAIN_METHOD,
        request_serializer=encode_train_request,
        response_deserializer=decode_train_response,
    )()
    await client_only.write(
        TrainHelloInfo(client_id=0, scenario_hash=f"{CHUNK}:0:1", wire_dtype="float32")
    )
    if not isinstance(parse_train_response(await client_only.read()), TrainWelcomeInfo):
        raise RuntimeError("the sync server did not welcome the aio client")

    async def aio_client() -> torch.Tensor | None:
        return await aio_echo(client_only)

    # Table (a)'s 1.57 MB upload (an eval step, answered by its result) on the
    # same three clients of the sync server.
    upload = (
        torch.randn(1, 2, wt.UPLOAD_BYTES // 8),
        torch.ones(1, 2, dtype=torch.int64),
        torch.zeros(1, 2, dtype=torch.int64),
    )
    upload_channel = rpc.make_channel(address)
    upload_raw = wt.RawEcho(upload_channel, [16, 16, wt.UPLOAD_BYTES], 16, CHUNK)
    upload_project = wt.Session(address, CHUNK)

    async def aio_client_upload() -> None:
        await aio_step(client_only, upload, "eval")

    async def sync_project_upload() -> None:
        upload_project.run_step(*upload, "eval")

    async def sync_raw_upload() -> None:
        upload_raw.run()

    async def sync_project_step() -> None:
        sync_project.run_step(acts, mask, labels, "train")

    async def sync_raw_step() -> None:
        sync_raw.run()

    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "aio project": aio_project,
        "aio raw": aio_raw,
        "sync project": sync_project_step,
        "sync raw": sync_raw_step,
        "aio client, sync server": aio_client,
        "upload: aio client, sync server": aio_client_upload,
        "upload: sync project": sync_project_upload,
        "upload: sync raw": sync_raw_upload,
    }
    for _ in range(10):
        for fn in variants.values():
            await fn()
    for fn in (aio_project, aio_client):
        if not torch.equal(await fn(), acts):
            raise RuntimeError("the aio echo returned a different tensor")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t0)
    await project.done_writing()
    await raw.done_writing()
    await client_only.done_writing()
    await channel.close()
    await to_sync.close()
    sync_raw.close()
    sync_project.close()
    sync_channel.close()
    upload_raw.close()
    upload_project.close()
    upload_channel.close()

    def paired(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))

    med = {name: statistics.median(ts) for name, ts in times.items()}
    med["aio client / sync project, paired"] = paired("aio client, sync server", "sync project")
    # Rates against raw's, as table (a) reads them: raw's time over the client's.
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
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(timeout=30)
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
        "step by step (what moving client.remote's Train stream to grpc.aio would give, "
        "the main server unchanged)"
    )
    print(
        f"table (a)'s {wt.UPLOAD_BYTES / 1e6:.2f} MB upload against the sync server, rate over "
        f"raw's (paired): the client on grpc.aio {med['upload: aio client rate / raw']:.3f}, "
        f"the sync project {med['upload: sync project rate / raw']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
