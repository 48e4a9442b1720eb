"""Framework overhead of one local step through the real main server, on
unshaped loopback: the step's wall time minus the server's compute.

    OMP_NUM_THREADS=1 python benchmarks/step_overhead.py [--steps 50]

A client (client.remote.MainServerStream) sends a (8, 64, 768) float32
activation (1.57 MB, GPT-2-small's smashed size) with its mask and labels to
a real MainServerService + ServerTrainer (a 768-wide, one-block Llama server
part with LoRA), which trains on it and streams back the 1.57 MB gradient.
overhead = client wall time (send + receive) - server compute_s (forward,
loss, backward, LoRA step, as the server measured it). Goal: <= 5 ms median.
The server runs in a child process, as the main server does in a run
(`--in-process` shares one interpreter, and its GIL, with the client).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from importlib import metadata

import torch


def build_server(hidden: int = 768, security: object = None) -> tuple[str, object, object]:
    """The main server of the benchmark on loopback, with `security`
    (fedsllm.wire.rpc.Security; None: no credentials, calls let through)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedsllm.config import AdapterConfig
    from fedsllm.model.lora import adapter_to_bytes, apply_lora
    from fedsllm.model.split import split_model
    from fedsllm.proto import main_server_pb2_grpc
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import create_server
    from main_server.compute import ServerTrainer
    from main_server.service import MainServerService
    from main_server.step_checks import StepLimits

    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=hidden,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    _, server_part = split_model(model, 1)
    part = apply_lora(server_part, AdapterConfig(), "llama")
    trainer = ServerTrainer(part, lr=1e-3)
    limits = StepLimits(
        hidden_size=hidden,
        vocab_size=259,
        max_seq_len=64,
        max_batch=8,
        wire_dtype="float32",
        num_clients=1,
        max_tensor_bytes=64 * 2**20,
    )
    service = MainServerService(
        trainer,
        limits,
        "bench",
        Tracer(None, "main_server"),
        chunk_bytes=256 * 1024,
        adapter_bytes=lambda: trainer.adapter_bytes(adapter_to_bytes),
    )
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(service, s)],
        security=security,
        allow_unauthenticated=security is None,
    )
    return f"127.0.0.1:{port}", server, trainer


def serve_in_child(conn) -> None:  # runs in the child process
    torch.set_num_threads(1)
    address, server, _ = build_server()
    conn.send(address)
    conn.recv()  # wait for the parent to finish
    from fedsllm.wire.rpc import stop_server

    stop_server(server, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from client.remote import MainServerStream
    from fedsllm.wire.rpc import stop_server

    child = conn = server = None
    if args.in_process:
        address, server, _ = build_server()
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        child = ctx.Process(target=serve_in_child, args=(child_conn,))
        child.start()
        address = conn.recv()
    b, t, d = 8, 64, 768
    acts = torch.randn(b, t, d)
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(3, 259, (b, t))
    overheads, walls, computes = [], [], []
    try:
        stream = MainServerStream(address, 0, "bench", "float32", 256 * 1024)
        for step in range(args.steps + 5):
            t0 = time.perf_counter()
            stream.send_step(0, step, True, acts, mask, labels)
            reply, nbytes = stream.receive_reply(0, step)
            wall = time.perf_counter() - t0
            if step >= 5:  # warm-up
                walls.append(wall)
                computes.append(reply.server_compute_s)
                overheads.append(wall - reply.server_compute_s)
        stream.close()
    finally:
        if server is not None:
            stop_server(server, 0.5)
        if child is not None:
            conn.send("stop")
            child.join(timeout=10)
    print(
        f"host: {platform.node()} {platform.machine()} python {platform.python_version()}, "
        f"torch {torch.__version__}, grpcio {metadata.version('grpcio')}, "
        f"protobuf {metadata.version('protobuf')}; server "
        f"{'in this process' if args.in_process else 'in a child process'}"
    )
    print(
        f"payload: activations {acts.numel() * 4 / 1e6:.2f} MB up, gradient "
        f"{nbytes / 1e6:.2f} MB down, {args.steps} steps"
    )
    print(f"step wall      median {statistics.median(walls) * 1e3:8.2f} ms")
    print(f"server compute median {statistics.median(computes) * 1e3:8.2f} ms")
    med = statistics.median(overheads)
    print(
        f"overhead       median {med * 1e3:8.2f} ms  p90 "
        f"{sorted(overheads)[int(0.9 * len(overheads))] * 1e3:.2f} ms  (goal <= 5 ms: "
        f"{'met' if med <= 0.005 else 'missed'})"
    )


if __name__ == "__main__":
    main()
