"""Wire-layer speed on loopback: tensor streaming throughput over gRPC and the
framework overhead of one activation/gradient echo round trip.

    OMP_NUM_THREADS=1 python benchmarks/wire_throughput.py [--quick]

(a) uploads one tensor as a Train step (chunked, assembled and validated by
    the server, which replies with a result and no tensor) for 1.5 MB and
    64 MB tensors at 64 KiB, 256 KiB and 1 MiB chunks; goal >= 500 MB/s.
(b) a 1.5 MB activation echo: (8, 64, 768) float32 activations + mask +
    labels up, a same-size gradient down, decoded to a tensor; median of 50;
    goal <= 5 ms. Nothing is subtracted: this is pure framework overhead.
(c) the codec alone (frame -> chunks -> assembler -> tensor), no gRPC.

The server runs in a child process, as the main server does in a run; pass
--in-process to share one interpreter (and its GIL) with the client.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

import grpc
import torch

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2_grpc
from fedsllm.wire import rpc
from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo, TrainHelloInfo, TrainWelcomeInfo
from fedsllm.wire.tensors import (
    ChunkAssembler,
    TensorSpec,
    frame_to_chunks,
    frame_to_tensor,
    tensor_to_frame,
)
from fedsllm.wire.train import (
    read_downlink,
    read_uplink,
    step_download_responses,
    step_upload_requests,
    train_request,
    train_response,
)

FLOATS = frozenset({"float32", "bfloat16", "float16"})
INTS = frozenset({"int64"})
CHUNK_SIZES = (64 * 2**10, 256 * 2**10, 2**20)


def _specs(header: StepHeaderInfo) -> list[TensorSpec]:
    return [
        TensorSpec("activations", FLOATS, None, require_finite=True),
        TensorSpec("attention_mask", INTS, ("B", "T")),
        TensorSpec("labels", INTS, ("B", "T")),
    ]


class BenchServer(main_server_pb2_grpc.MainServerServicer):
    """Train mode echoes the activations as the gradient; eval mode returns none."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        chunk_bytes = 2**20
        try:
            for item in read_uplink(request_iterator, _specs):
                if isinstance(item, TrainHelloInfo):
                    chunk_bytes = int(item.scenario_hash)  # the bench passes chunk size here
                    yield train_response(
                        TrainWelcomeInfo(
                            client_id=item.client_id,
                            scenario_hash=item.scenario_hash,
                            max_tensor_bytes=2**30,
                        )
                    )
                    continue
                acts = item.tensor("activations")
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
                yield from step_download_responses(result, frames, chunk_bytes)
        except WireError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))


def _grad_specs(result: StepResultInfo) -> list[TensorSpec]:
    return [TensorSpec("activations_grad", FLOATS)]


class Session:
    """One open Train stream with a given chunk size."""

    def __init__(self, address: str, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.channel = rpc.make_channel(address)
        self.requests = rpc.RequestQueue()
        stub = main_server_pb2_grpc.MainServerStub(self.channel)
        self.downlink = read_downlink(
            stub.Train(self.requests, timeout=600),
            _grad_specs,
        )
        self.requests.put(
            train_request(
                TrainHelloInfo(client_id=0, scenario_hash=str(chunk_bytes), wire_dtype="float32")
            )
        )
        next(self.downlink)
        self.step = 0

    def run_step(self, acts: torch.Tensor, mode: str) -> torch.Tensor | None:
        b, t = acts.shape[0], acts.shape[1]
        frames = [
            tensor_to_frame("activations", acts),
            tensor_to_frame("attention_mask", torch.ones(b, t, dtype=torch.int64)),
            tensor_to_frame("labels", torch.zeros(b, t, dtype=torch.int64)),
        ]
        header = StepHeaderInfo(
            round=0,
            step=self.step,
            mode=mode,
            downlink_bps=0.0,
            tensor_names=("activations", "attention_mask", "labels"),
        )
        self.step += 1
        self.requests.put_all(step_upload_requests(header, frames, self.chunk_bytes))
        reply = next(self.downlink)
        return reply.tensor("activations_grad") if reply.frames else None

    def close(self) -> None:
        self.requests.close()
        next(self.downlink, None)
        self.channel.close()


def bench_stream(address: str, num_bytes: int, chunk_bytes: int, reps: int) -> float:
    """Median MB/s of uploading one float32 tensor of `num_bytes` (eval step)."""
    acts = torch.randn(1, 1, num_bytes // 4)
    s = Session(address, chunk_bytes)
    s.run_step(acts, "eval")  # warm-up
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.run_step(acts, "eval")
        rates.append(num_bytes / (time.perf_counter() - t0) / 1e6)
    s.close()
    return statistics.median(rates)


def bench_echo(address: str, reps: int) -> tuple[float, float, float]:
    acts = torch.randn(8, 64, 768)
    s = Session(address, 2**20)
    for _ in range(5):
        s.run_step(acts, "train")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        grad = s.run_step(acts, "train")
        times.append(time.perf_counter() - t0)
    s.close()
    if grad is None or not torch.equal(grad, acts):
        raise RuntimeError("echo returned a different tensor")
    times.sort()
    return statistics.median(times), times[len(times) // 10], times[-1 - len(times) // 10]


def bench_codec(num_bytes: int, chunk_bytes: int, reps: int) -> float:
    acts = torch.randn(num_bytes // 4)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        asm = ChunkAssembler()
        for chunk in frame_to_chunks(tensor_to_frame("a", acts), chunk_bytes):
            asm.feed(chunk)
        frame_to_tensor(asm.finish()["a"])
        rates.append(num_bytes / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def _identity(data: bytes) -> bytes:
    return data


def _raw_sink(request_iterator, context) -> bytes:
    """Baseline: count the bytes of a stream of raw messages (no protobuf)."""
    return sum(len(m) for m in request_iterator).to_bytes(8, "little")


def _add_raw_sink(server: grpc.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        "bench.Raw", {"Sink": grpc.stream_unary_rpc_method_handler(_raw_sink, _identity, _identity)}
    )
    server.add_generic_rpc_handlers((handler,))


def bench_raw(address: str, num_bytes: int, chunk_bytes: int, reps: int) -> float:
    """Median MB/s of a gRPC stream of ready-made byte messages: the transport's
    ceiling on this host, with no protobuf and no tensor work."""
    with rpc.make_channel(address) as channel:
        call = channel.stream_unary(
            "/bench.Raw/Sink", request_serializer=_identity, response_deserializer=_identity
        )
        msgs = [bytes(chunk_bytes)] * (num_bytes // chunk_bytes)
        call(iter(msgs), timeout=600)
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call(iter(msgs), timeout=600)
            rates.append(num_bytes / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def _start_server() -> grpc.Server:
    server, port = rpc.create_server(
        "127.0.0.1:0",
        [
            lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(BenchServer(), s),
            _add_raw_sink,
        ],
        service_names=[rpc.MAIN_SERVER_SERVICE],
        max_workers=4,
    )
    server.bench_port = port  # type: ignore[attr-defined]
    return server


def _serve() -> int:
    """Child mode: serve until stdin closes, after printing the port."""
    torch.set_num_threads(1)
    server = _start_server()
    print(server.bench_port, flush=True)  # type: ignore[attr-defined]
    sys.stdin.read()
    rpc.stop_server(server, 0.5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the server in this process (default: a child process)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        return _serve()
    torch.set_num_threads(1)
    reps_small, reps_big, reps_echo = (5, 2, 20) if ns.quick else (20, 5, 50)

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
        "every figure)"
    )
    print("scenario: none (wire layer only, loopback, unshaped)")
    print(f"server: {'same process' if ns.in_process else 'child process'}")

    child: subprocess.Popen[str] | None = None
    server: grpc.Server | None = None
    if ns.in_process:
        server = _start_server()
        port = server.bench_port  # type: ignore[attr-defined]
    else:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        port = int(child.stdout.readline())  # type: ignore[union-attr]
    address = f"127.0.0.1:{port}"
    try:
        rpc.wait_healthy(address, 10)
        print(
            "\n(a) tensor upload over gRPC, median MB/s (goal >= 500); raw = a stream of "
            "ready-made byte messages, the transport ceiling in this run"
        )
        print(f"{'tensor':>10} {'chunk':>9} {'MB/s':>8} {'Gbit/s':>7} {'raw MB/s':>9} {'ratio':>6}")
        for num_bytes, reps in ((1_572_864, reps_small), (64 * 2**20, reps_big)):
            for chunk in CHUNK_SIZES:
                rate = bench_stream(address, num_bytes, chunk, reps)
                raw = bench_raw(address, num_bytes, chunk, reps)
                print(
                    f"{num_bytes / 1e6:>8.2f}MB {chunk // 1024:>6}KiB {rate:>8.0f} "
                    f"{rate * 8 / 1000:>7.2f} {raw:>9.0f} {rate / raw:>6.2f}"
                )
        print(
            "\n(b) 1.5 MB activation echo round trip, (8,64,768) fp32 up + same down, "
            "1 MiB chunks (goal <= 5 ms)"
        )
        med, p10, p90 = bench_echo(address, reps_echo)
        print(
            f"median {med * 1e3:.2f} ms  p10 {p10 * 1e3:.2f} ms  p90 {p90 * 1e3:.2f} ms "
            f"over {reps_echo}; effective {2 * 1_572_864 / med / 1e6:.0f} MB/s both ways"
        )
    finally:
        if server is not None:
            rpc.stop_server(server, 0.5)
        if child is not None:
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(timeout=30)
    print("\n(c) codec alone (encode, chunk, validate, assemble, decode), median MB/s")
    for chunk in CHUNK_SIZES:
        print(
            f"   64 MiB, {chunk // 1024:>5} KiB chunks: "
            f"{bench_codec(64 * 2**20, chunk, reps_big):.0f} MB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
