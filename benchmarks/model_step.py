"""Forward/backward time of each split part for the built-in presets (batch 8, seq 64).

Prints, per preset, the median over a few repetitions of: client forward,
server forward + loss, server backward, client backward, and the whole
step, with LoRA r=8 on the family's default targets. The base is random
(pretraining does not change timings). Run:

    .venv/bin/python benchmarks/model_step.py [--threads 2] [--reps 10] [--presets ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def _time_step(client, server, ids, mask, labels) -> dict[str, float]:
    t0 = time.perf_counter()
    hidden = client(ids, mask)
    t1 = time.perf_counter()
    smashed = hidden.detach().requires_grad_(True)
    _logits, loss = server(smashed, mask, labels)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    hidden.backward(smashed.grad)
    t4 = time.perf_counter()
    for part in (client, server):
        part.zero_grad(set_to_none=True)
    return {
        "client_fwd": t1 - t0,
        "server_fwd": t2 - t1,
        "server_bwd": t3 - t2,
        "client_bwd": t4 - t3,
        "step": t4 - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--reps", type=int, default=10, help="timed steps per preset (default 10)")
    parser.add_argument("--presets", nargs="+", default=["tiny-llama", "tiny-gpt2", "gpt2-small"])
    parser.add_argument("--split-layer", type=int, default=2, help="split layer L (default 2)")
    args = parser.parse_args()

    import peft
    import torch
    import transformers

    from fedsllm.config import AdapterConfig, DataConfig, ModelConfig, ScenarioConfig
    from fedsllm.model.build import build_base_model, model_family
    from fedsllm.model.lora import apply_lora
    from fedsllm.model.split import split_model

    torch.set_num_threads(args.threads)
    print(
        f"host {platform.node()} ({os.cpu_count()} cpus, {platform.machine()}), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, threads {args.threads}"
    )
    batch, seq_len = 8, 64
    print(
        f"batch {batch}, seq {seq_len}, fp32, LoRA r=8, split {args.split_layer}, "
        f"median of {args.reps} steps after 2 warm-up steps (ms)"
    )
    print(
        f"{'preset':<12} {'client fwd':>10} {'client bwd':>10} {'server fwd':>10} "
        f"{'server bwd':>10} {'step':>8}"
    )
    for preset in args.presets:
        scenario = ScenarioConfig(
            model=ModelConfig(preset=preset, pretrain_steps=0), data=DataConfig(seq_len=seq_len)
        )
        model = build_base_model(scenario, 259)
        family = model_family(model)
        client, server = split_model(model, args.split_layer)
        client = apply_lora(client, AdapterConfig(rank=8), family)
        server = apply_lora(server, AdapterConfig(rank=8), family)
        client.train()
        server.train()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 259, (batch, seq_len), generator=gen)
        mask = torch.ones_like(ids)
        labels = ids.clone()
        for _ in range(2):
            _time_step(client, server, ids, mask, labels)
        runs = [_time_step(client, server, ids, mask, labels) for _ in range(args.reps)]
        med = {k: statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}
        print(
            f"{preset:<12} {med['client_fwd']:>10.1f} {med['client_bwd']:>10.1f} "
            f"{med['server_fwd']:>10.1f} {med['server_bwd']:>10.1f} {med['step']:>8.1f}"
        )


if __name__ == "__main__":
    main()
