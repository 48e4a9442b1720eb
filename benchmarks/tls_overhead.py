"""Transport cost of mutual TLS: a 1.5 MB echo round trip over one bidirectional
gRPC stream, with and without mTLS, and the cost of opening a connection.

Prints figures and ratios only (no pass/fail). The server is a child process
serving a generic echo handler behind IdentityInterceptor in both modes (token
identity without TLS, certificate identity with it), so the only difference is
the TLS layer. A round trip sends the payload in --chunk-bytes messages (the
Train stream's chunking) and waits for every echoed chunk, like one local
step's activations up and gradients down. The TLS cost per local step through
the real main server is measured separately, with the roles wired.

    .venv/bin/python benchmarks/tls_overhead.py [--payload-bytes 1500000] [--repeats 40]
"""

from __future__ import annotations

import argparse
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from importlib import metadata
from pathlib import Path

import grpc

SERVICE = "fedsllm.bench.Echo"
STREAM = f"/{SERVICE}/Stream"
PING = f"/{SERVICE}/Ping"
MAX_MESSAGE_BYTES = 64 * 2**20
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
TOKEN = "bench-token-0123456789abcdef"


def serve(mode: str, cert_dir: str) -> None:
    """Child process: serve echo on 127.0.0.1:0, print the port, run until killed."""
    from fedsllm.security.credentials import load_tls, server_credentials, tls_config_for
    from fedsllm.security.identity import Identity, IdentityInterceptor, TokenTable, caller

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        caller(context)
        yield from requests

    def ping(request: bytes, context: grpc.ServicerContext) -> bytes:
        return str(caller(context)).encode()

    tokens = TokenTable({TOKEN: Identity.client(0)})
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=OPTIONS,
        interceptors=[IdentityInterceptor(tokens)],
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Stream": grpc.stream_stream_rpc_method_handler(stream),
                    "Ping": grpc.unary_unary_rpc_method_handler(ping),
                },
            )
        ]
    )
    if mode == "tls":
        material = load_tls(tls_config_for(cert_dir, Identity("main_server")))
        port = server.add_secure_port("127.0.0.1:0", server_credentials(material))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def _channel(mode: str, port: int, cert_dir: str) -> grpc.Channel:
    from fedsllm.security.credentials import channel_credentials, load_tls, tls_config_for
    from fedsllm.security.identity import Identity, with_token

    if mode == "tls":
        material = load_tls(tls_config_for(cert_dir, Identity.client(0)))
        return grpc.secure_channel(f"localhost:{port}", channel_credentials(material), OPTIONS)
    return with_token(grpc.insecure_channel(f"127.0.0.1:{port}", OPTIONS), TOKEN)


def _queue_iter(q: queue.Queue[bytes | None]) -> Iterator[bytes]:
    while (item := q.get()) is not None:
        yield item


def measure(mode: str, port: int, cert_dir: str, args: argparse.Namespace) -> dict[str, list]:
    """Round-trip times over one long-lived stream, and fresh-connection times."""
    payload = bytes(range(256)) * (args.payload_bytes // 256 + 1)
    payload = payload[: args.payload_bytes]
    chunks = [payload[i : i + args.chunk_bytes] for i in range(0, len(payload), args.chunk_bytes)]
    round_trip_s = []
    with _channel(mode, port, cert_dir) as channel:
        requests: queue.Queue[bytes | None] = queue.Queue()
        responses = channel.stream_stream(STREAM)(_queue_iter(requests), timeout=600)
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            for chunk in chunks:
                requests.put(chunk)
            got = 0
            for _ in chunks:
                got += len(next(responses))
            dt = time.perf_counter() - t0
            if got != len(payload):
                raise RuntimeError(f"echoed {got} bytes, sent {len(payload)}")
            if i >= args.warmup:
                round_trip_s.append(dt)
        requests.put(None)
        for _ in responses:
            pass
    connect_s = []
    for _ in range(args.connects):
        t0 = time.perf_counter()
        with _channel(mode, port, cert_dir) as channel:
            channel.unary_unary(PING)(b"", timeout=30, wait_for_ready=True)
        connect_s.append(time.perf_counter() - t0)
    return {"round_trip_s": round_trip_s, "connect_s": connect_s}


def _stats(xs: list[float]) -> str:
    qs = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return (
        f"median {statistics.median(xs) * 1e3:7.3f} ms "
        f"(p10 {qs[0] * 1e3:.3f}, p90 {qs[-1] * 1e3:.3f}, n={len(xs)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "CERT_DIR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=1_500_000,
        help="bytes each way per round trip (default 1500000)",
    )
    parser.add_argument(
        "--chunk-bytes", type=int, default=2**20, help="bytes per stream message (default 1 MiB)"
    )
    parser.add_argument("--repeats", type=int, default=40, help="timed round trips (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed round trips (default 5)")
    parser.add_argument("--connects", type=int, default=10, help="fresh connections (default 10)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0

    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("grpcio", "cryptography"))
    print(f"host: {platform.node()} {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"python {sys.version.split()[0]}, {platform.system()} {platform.release()}; {versions}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S')}; scenario: none (synthetic echo, "
        f"{args.payload_bytes} B each way in {args.chunk_bytes} B messages, server in a "
        f"child process on 127.0.0.1)"
    )
    from fedsllm.security.certs import write_certs

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cert_dir = str(Path(tmp) / "certs")
        write_certs(cert_dir, 1)
        for mode in ("insecure", "tls"):
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", mode, cert_dir],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None
                port = int(proc.stdout.readline())
                results[mode] = measure(mode, port, cert_dir, args)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    for mode in ("insecure", "tls"):
        label = "mTLS" if mode == "tls" else "insecure+token"
        print(f"{label:>15} round trip: {_stats(results[mode]['round_trip_s'])}")
        print(f"{label:>15} connect+1st call: {_stats(results[mode]['connect_s'])}")
    rt = {m: statistics.median(results[m]["round_trip_s"]) for m in results}
    ct = {m: statistics.median(results[m]["connect_s"]) for m in results}
    mb_s = {m: 2 * args.payload_bytes / rt[m] / 1e6 for m in rt}
    print(
        f"round trip: mTLS / insecure = {rt['tls'] / rt['insecure']:.2f}x "
        f"(+{(rt['tls'] - rt['insecure']) * 1e3:.3f} ms per {args.payload_bytes} B each way; "
        f"{mb_s['insecure']:.0f} vs {mb_s['tls']:.0f} MB/s both directions)"
    )
    print(
        f"connection: mTLS / insecure = {ct['tls'] / ct['insecure']:.2f}x "
        f"(+{(ct['tls'] - ct['insecure']) * 1e3:.3f} ms once per channel)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
