"""Telemetry cost per local step: what typed records streamed to a collector cost
the training thread, as a share of a step's time (goal: under 1%).

A client's local iteration emits five records (client_forward and
client_backward spans with their emulated device step, uplink, wait_reply,
and a train_loss event). This script runs steps of a fixed torch workload
(`--step-ms`, the compute releases the GIL as real training does) and emits
those five records per step through a Tracer whose sink is a real
TelemetrySender pushing over gRPC to a collector in another process (as the
fed server is), which writes JSON lines: the sender thread's serialization,
spool writes and pushes compete with the training thread for the GIL, as in
a run. It reports

- the caller's time per record (inside Tracer.span / Tracer.event),
- the wall time per step with telemetry against the same steps without it
  (median of interleaved repeats), and the difference as a share of a step.

With --run-dir RUN it also reads a finished run's collected trace and prints
records per local step and the mean local-step time of its clients, and the
measured per-record cost against that step time.

    .venv/bin/python benchmarks/telemetry_overhead.py [--step-ms 20] [--run-dir RUN]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RECORDS_PER_STEP = 5


def header(args: argparse.Namespace) -> None:
    versions = {p: metadata.version(p) for p in ("grpcio", "protobuf", "torch")}
    print(f"# telemetry_overhead  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# host {platform.node()}  {platform.platform()}  cpus={os.cpu_count()}")
    print(f"# python {platform.python_version()}  {versions}")
    print(
        f"# scenario: synthetic steps of {args.step_ms:g} ms, {args.num_steps} steps x "
        f"{args.repeats} repeats, {RECORDS_PER_STEP} records per step"
    )


def make_workload(step_ms: float) -> Any:
    """A callable doing about `step_ms` of torch compute (calibrated here)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)

    def work(n: int) -> None:
        for _ in range(n):
            torch.mm(a, a)

    work(10)
    t0 = time.perf_counter()
    work(50)
    per_mm_s = (time.perf_counter() - t0) / 50
    n = max(1, round(step_ms / 1e3 / per_mm_s))
    return lambda: work(n)


def run_steps(tracer: Any, work: Any, num_steps: int) -> tuple[float, float]:
    """(wall seconds per step, caller seconds per record) for `num_steps` steps."""
    from fedsllm.device import StepRecord

    in_tracer_s = 0.0
    start = time.perf_counter()
    for step in range(num_steps):
        t = time.perf_counter()
        with tracer.span("client_forward", round=0, step=step) as span:
            span.extra["device"] = StepRecord("client_forward", 5.3e8, 0.01, 0.009, 0.001, 0, True)
            in_tracer_s += time.perf_counter() - t
            work()
            t = time.perf_counter()
        with tracer.span("uplink", round=0, step=step) as span:
            span.bytes = 557_256
        with tracer.span("wait_reply", round=0, step=step) as span:
            span.bytes = 557_256
            span.extra = {"server_compute_s": 0.004, "downlink_bps": 0.0}
        with tracer.span("client_backward", round=0, step=step) as span:
            span.extra["device"] = StepRecord("client_backward", 1e9, 0.02, 0.018, 0.002, 0, True)
            in_tracer_s += time.perf_counter() - t
            work()
            t = time.perf_counter()
        tracer.event("train_loss", round=0, step=step, loss=3.25, num_tokens=128)
        in_tracer_s += time.perf_counter() - t
    wall_s = time.perf_counter() - start
    return wall_s / num_steps, in_tracer_s / (num_steps * RECORDS_PER_STEP)


COLLECTOR = """
import sys
from pathlib import Path
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.service import TELEMETRY_SERVICE, TelemetryService, add_to_server
from fedsllm.wire.rpc import create_server, stop_server
collector = TelemetryCollector(Path(sys.argv[1]))
server, port = create_server(
    "127.0.0.1:0",
    [add_to_server(TelemetryService(collector))],
    service_names=(TELEMETRY_SERVICE,),
    allow_unauthenticated=True,
)
print(port, flush=True)
sys.stdin.read()
print(len(collector.records()), flush=True)
collector.close()
stop_server(server, grace_s=0.5)
"""


def measure(args: argparse.Namespace) -> float:
    import subprocess

    from fedsllm.telemetry.service import start_sender
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import make_channel

    work = make_workload(args.step_ms / 2)  # two compute phases per step
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        child = subprocess.Popen(
            [sys.executable, "-c", COLLECTOR, str(root / "trace")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        port = int(child.stdout.readline())
        channel = make_channel(f"127.0.0.1:{port}")
        sender = start_sender(channel, root, "client", 0)
        with_t = Tracer(None, "client", client_id=0, sink=sender)
        without_t = Tracer(None, "client", client_id=0)
        step_with, step_without, per_record, per_record_without = [], [], [], []
        for _ in range(args.repeats):
            s, r = run_steps(with_t, work, args.num_steps)
            step_with.append(s)
            per_record.append(r)
            s, r = run_steps(without_t, work, args.num_steps)
            step_without.append(s)
            per_record_without.append(r)
        # The bookkeeping alone: the same records back to back, no compute between.
        tight_with = statistics.median(
            run_steps(with_t, lambda: None, args.num_steps)[1] for _ in range(args.repeats)
        )
        tight_without = statistics.median(
            run_steps(without_t, lambda: None, args.num_steps)[1] for _ in range(args.repeats)
        )
        delivered = sender.close(30.0)
        channel.close()
        num_collected = int(child.communicate("", timeout=30)[0].split()[-1])
    step_s = statistics.median(step_without)
    cost_s = statistics.median(per_record)
    extra_s = statistics.median(step_with) - step_s
    print(
        f"records emitted {2 * args.repeats * args.num_steps * RECORDS_PER_STEP}, collected "
        f"{num_collected} (all acknowledged: {delivered})"
    )
    print(
        f"caller time per record: {cost_s * 1e6:.1f} us (min {min(per_record) * 1e6:.1f}); "
        f"{RECORDS_PER_STEP} per step = {cost_s * RECORDS_PER_STEP * 1e6:.1f} us = "
        f"{cost_s * RECORDS_PER_STEP / step_s * 100:.3f}% of a {step_s * 1e3:.2f} ms step "
        f"({'under' if cost_s * RECORDS_PER_STEP / step_s < 0.01 else 'OVER'} the 1% goal)"
    )
    print(
        f"  the same records with no sink (typing only, nothing sent): "
        f"{statistics.median(per_record_without) * 1e6:.1f} us per record"
    )
    print(
        f"  back to back, no compute between: {tight_with * 1e6:.1f} us per record with the "
        f"sender, {tight_without * 1e6:.1f} us without"
    )
    ratio = extra_s / step_s
    print(
        f"step wall time with telemetry {statistics.median(step_with) * 1e3:.3f} ms, without "
        f"{step_s * 1e3:.3f} ms: {extra_s * 1e6:+.1f} us = {ratio * 100:+.3f}% per step "
        f"(medians of {args.repeats}; spread without "
        f"{(max(step_without) - min(step_without)) * 1e6:.0f} us)"
    )
    return cost_s


def from_run(run_dir: Path, cost_s: float) -> None:
    from fedsllm.trace import read_records

    records = read_records(run_dir / "trace")
    steps: dict[tuple[int, int, int], list[float]] = {}
    for r in records:
        if r["role"] == "client" and r["name"] in ("client_forward", "client_backward"):
            steps.setdefault((r["client"], r["round"], r["step"]), []).extend((r["t0"], r["t1"]))
    if not steps:
        print(f"{run_dir}: no client steps in the trace")
        return
    durations = [max(v) - min(v) for v in steps.values()]
    step_s = statistics.mean(durations)
    client_records = sum(1 for r in records if r["role"] == "client")
    all_records = len(records)
    per_step = client_records / len(steps)
    print(
        f"{run_dir}: {len(steps)} client steps, mean {step_s * 1e3:.2f} ms (forward to "
        f"backward); {per_step:.1f} client records per step ({all_records} records in all, "
        f"{all_records / len(steps):.1f} per step across roles)"
    )
    print(
        f"  at {cost_s * 1e6:.1f} us per record: {per_step * cost_s / step_s * 100:.3f}% of a "
        f"client step ({'under' if per_step * cost_s / step_s < 0.01 else 'OVER'} the 1% goal)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, default=20.0, help="compute per step, ms")
    parser.add_argument("--num-steps", type=int, default=200, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median)")
    parser.add_argument("--run-dir", default="", help="a finished run to read step times from")
    args = parser.parse_args(argv)
    header(args)
    cost_s = measure(args)
    if args.run_dir:
        from_run(Path(args.run_dir), cost_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
