"""Cost of one trace span (Tracer.span writing to a file) against a typical local step.

A local iteration records about five spans and one event (client_forward,
uplink, wait_reply, client_backward, plus server_compute and downlink on the
server) around a step of tens of milliseconds; the goal is that tracing costs
under 1% of it. Prints host, versions, the per-span cost (median of several
repeats) and the ratio. Run: .venv/bin/python benchmarks/trace_overhead.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedsllm.trace import Tracer


def span_cost_s(num_spans: int, with_device_extra: bool) -> float:
    """Seconds per span of `num_spans` spans written to a real file."""
    with tempfile.TemporaryDirectory() as tmp:
        tracer = Tracer(Path(tmp) / "bench.jsonl", "client", client_id=0)
        device = {
            "label": "client_forward",
            "flops": 5.3e8,
            "target_s": 0.26,
            "compute_s": 0.09,
            "padded_s": 0.17,
            "overrun_s": 0.0,
            "done": True,
        }
        start = time.perf_counter()
        for i in range(num_spans):
            with tracer.span("client_forward", round=3, step=i) as span:
                span.bytes = 557_256
                if with_device_extra:
                    span.extra["device"] = device
        elapsed = time.perf_counter() - start
        tracer.close()
    return elapsed / num_spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-spans", type=int, default=20_000, help="spans per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (median is reported)")
    parser.add_argument(
        "--step-ms",
        type=float,
        default=20.0,
        help="duration of a typical local step, ms (default 20)",
    )
    parser.add_argument(
        "--spans-per-step",
        type=int,
        default=6,
        help="records per local iteration across processes (default 6)",
    )
    args = parser.parse_args(argv)
    print(f"host: {platform.node()} {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"python {sys.version.split()[0]}, {platform.system()} {platform.release()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S')}; scenario: none (synthetic spans, "
        f"{args.num_spans} per repeat, median of {args.repeats})"
    )
    step_s = args.step_ms / 1e3
    for extra in (False, True):
        costs = [span_cost_s(args.num_spans, extra) for _ in range(args.repeats)]
        per_span = statistics.median(costs)
        per_step = per_span * args.spans_per_step
        label = "span with device extra" if extra else "plain span"
        print(
            f"{label:>24}: {per_span * 1e6:7.2f} us/span (min {min(costs) * 1e6:.2f}) = "
            f"{per_span / step_s * 100:.3f}% of a step each; "
            f"{args.spans_per_step} per step = {per_step * 1e6:7.1f} us = "
            f"{per_step / step_s * 100:.3f}% of a {args.step_ms:g} ms step "
            f"({'under' if per_step / step_s < 0.01 else 'OVER'} the 1% goal)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
