"""TLS cost per local step through the real main server, against plain gRPC, in one run.

    OMP_NUM_THREADS=1 python benchmarks/tls_step_overhead.py [--steps 60]

Two real MainServerService + ServerTrainer servers (step_overhead.py's 768-wide
server part) run in child processes, one with per-peer tokens on plain gRPC (what
`fedsllm run` does on loopback) and one with mutual TLS (`fedsllm run --tls`,
certificates from fedsllm.security.certs), both behind IdentityInterceptor. One
client (client.remote.MainServerStream) alternates steps between them: 1.57 MB
of activations up, 1.57 MB of gradient down per step. Reported: the median step
wall time and the framework overhead (wall - server compute) of each, and the
TLS cost per step = median paired difference of overheads (compute noise
cancels). Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from importlib import metadata

import torch

TOKEN_IDENTITIES = ("client/0", "launcher")


def serve_child(conn, mode: str, cert_dir: str, tokens: dict[str, str]) -> None:
    torch.set_num_threads(1)
    from fedsllm.security.credentials import load_tls, tls_config_for
    from fedsllm.security.identity import Identity, TokenTable
    from fedsllm.wire.rpc import Security, stop_server

    tls = None
    if mode == "tls":
        tls = load_tls(tls_config_for(cert_dir, Identity("main_server")))
    security = Security(tls=tls, tokens=TokenTable.from_identity_map(tokens))
    from step_overhead import build_server

    address, server, _ = build_server(security=security)
    conn.send(address)
    conn.recv()
    stop_server(server, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import multiprocessing as mp

    from client.remote import MainServerStream
    from fedsllm.security.certs import write_certs
    from fedsllm.security.credentials import load_tls, tls_config_for
    from fedsllm.security.identity import Identity, TokenTable
    from fedsllm.wire.rpc import Security

    cert_dir = tempfile.mkdtemp(prefix="fedsllm-bench-") + "/certs"
    write_certs(cert_dir, 1)
    table = TokenTable.generate(Identity.client(0) if i == "client/0" else Identity(i)
                                for i in TOKEN_IDENTITIES)  # fmt: skip
    ctx = mp.get_context("spawn")
    children, addresses = {}, {}
    for mode in ("plain", "tls"):
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(
            target=serve_child, args=(child_conn, mode, cert_dir, table.to_identity_map())
        )
        proc.start()
        children[mode] = (proc, conn)
        addresses[mode] = conn.recv()
    me = load_tls(tls_config_for(cert_dir, Identity.client(0)))
    securities = {
        "plain": Security(token=table.token_for(Identity.client(0))),
        "tls": Security(tls=me),
    }
    b, t, d = 8, 64, 768
    acts = torch.randn(b, t, d)
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(3, 259, (b, t))
    walls = {m: [] for m in securities}
    overheads = {m: [] for m in securities}
    try:
        streams = {
            m: MainServerStream(addresses[m], 0, "bench", "float32", 256 * 1024, security=s)
            for m, s in securities.items()
        }
        for step in range(args.steps + 5):
            for mode in ("plain", "tls") if step % 2 else ("tls", "plain"):
                t0 = time.perf_counter()
                streams[mode].send_step(0, step, True, acts, mask, labels)
                reply, nbytes = streams[mode].receive_reply(0, step)
                wall = time.perf_counter() - t0
                if step >= 5:
                    walls[mode].append(wall)
                    overheads[mode].append(wall - reply.server_compute_s)
        for stream in streams.values():
            stream.close()
    finally:
        for proc, conn in children.values():
            conn.send("stop")
            proc.join(timeout=10)
    print(
        f"host: {platform.node()} {platform.machine()} python {platform.python_version()}, "
        f"torch {torch.__version__}, grpcio {metadata.version('grpcio')}; servers in child "
        f"processes; {args.steps} steps each, interleaved"
    )
    print(f"payload: {acts.numel() * 4 / 1e6:.2f} MB up, {nbytes / 1e6:.2f} MB down per step")
    for mode in ("plain", "tls"):
        print(
            f"{mode:5s}: step wall median {statistics.median(walls[mode]) * 1e3:7.2f} ms, "
            f"overhead (wall - compute) median {statistics.median(overheads[mode]) * 1e3:6.2f} ms"
        )
    diffs = [a - b for a, b in zip(overheads["tls"], overheads["plain"], strict=True)]
    med = statistics.median(diffs)
    print(
        f"TLS cost per local step: median {med * 1e3:.2f} ms (paired), "
        f"{med / statistics.median(walls['plain']) * 100:.1f}% of a plain step's wall time"
    )


if __name__ == "__main__":
    main()
