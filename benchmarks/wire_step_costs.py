"""What each stage of the wire costs in the 1.57 MB echo, stage by stage, in one stream.

    OMP_NUM_THREADS=1 python benchmarks/wire_step_costs.py [--steps N]

The echo of benchmarks/wire_throughput.py (table b), with validation on:
(8, 64, 768) float32 activations, mask and labels up, the same-size gradient
down, 256 KiB chunks, the server in a child process. For each stage below,
one Train stream runs 2 x N steps and leaves the stage out of half of them
(with, without, without, with, ...: wire_throughput.skipped); the paired
ratio of a step with the stage to the step next to it without is the
stage's cost, in % of a step and in microseconds.

Why this way: the echo table compares different streams (project, raw, the
minimal framework), and two streams of the very same code differ by a few
percent from run to run (which gRPC threads and buffers they get), more than
most single stages cost. Steps of one stream differ only in the stage, so a
figure here resolves about half a percent: what it takes to tell which
changes to the per-step Python pay (issue 13).

Stages (the ones marked "left out" are replaced by nothing; "reused" ones by
the previous step's result, so what remains is the rest of the step):
- client packing: the step's StepParts made from its frames (reused: the
  previous step's parts are sent again, their head serialized and payloads
  copied as usual; the frames and the header are made either way);
- client finiteness: the gradient's NaN / Inf check (left out);
- server finiteness: the activations' NaN / Inf check (left out);
- server value checks: mask values and label range, the checks of
  main_server.step_checks run as each of the two tensors completes (left
  out);
- server shape checks: the shapes' symbols (B, T) bound across tensors (left
  out; dtype and bytes against the shape stay, as they frame the data);
- server reply build: tensor_to_frame of the gradient and its ReplyParts
  (reused, as the client's parts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

import wire_throughput as wt  # noqa: E402 - a sibling script

from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo  # noqa: E402
from fedsllm.wire.tensors import TensorFrame, TensorSpec  # noqa: E402

CLIENT_STAGES = ("build", "finite")


class StagedSession(wt.Session):
    """A validated echo session that leaves `client_skip` (one of CLIENT_STAGES)
    out of the steps wire_throughput.skipped names, and asks the server to
    leave `server_skip` (one of wire_throughput.SERVER_STAGES) out of them."""

    def __init__(self, address: str, client_skip: str = "", server_skip: str = "") -> None:
        if client_skip and server_skip:
            # Reused parts carry an earlier header, whose step number the server
            # would take its own skipping from.
            raise ValueError("one stage at a time: client_skip or server_skip, not both")
        self.client_skip = client_skip
        self._last_parts: list[Any] = []
        super().__init__(address, wt.DEFAULT_CHUNK, validate=True, server_skip=server_skip)

    def _grad_specs(self, result: StepResultInfo) -> list[TensorSpec]:
        finite = not (self.client_skip == "finite" and wt.skipped(result.step))
        return [TensorSpec("activations_grad", wt.FLOATS, self.shape, require_finite=finite)]

    def _requests(self, header: StepHeaderInfo, frames: list[TensorFrame]) -> Iterable[Any]:
        if self.client_skip == "build" and wt.skipped(header.step) and self._last_parts:
            for part in self._last_parts:
                part._pieces = None  # serialized and copied again, as new parts are
            return self._last_parts
        self._last_parts = list(super()._requests(header, frames))
        return self._last_parts


def stage_cost(with_s: list[float], without_s: list[float]) -> tuple[float, float, float, float]:
    """(median, first and third quartile of the paired ratio with / without,
    microseconds the stage costs: the median ratio's excess times the median
    step without it)."""
    ratios = [a / b for a, b in zip(with_s, without_s, strict=True)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return q2, q1, q3, (q2 - 1.0) * statistics.median(without_s) * 1e6


def run_stage(address: str, steps: int, client_skip: str = "", server_skip: str = "") -> tuple:
    acts = torch.randn(*wt.ECHO_SHAPE)
    b, t = wt.ECHO_SHAPE[:2]
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(0, wt.VOCAB, (b, t))
    session = StagedSession(address, client_skip, server_skip)
    with_s: list[float] = []
    without_s: list[float] = []
    try:
        for _ in range(20):  # warm-up: layouts, plans, receive buffers; 20 keeps pairs aligned
            session.run_step(acts, mask, labels, "train")
        for _ in range(steps):
            for _ in range(2):
                off = wt.skipped(session.step)
                t0 = time.perf_counter()
                grad = session.run_step(acts, mask, labels, "train")
                (without_s if off else with_s).append(time.perf_counter() - t0)
        if grad is None or not torch.equal(grad, acts):
            raise RuntimeError("the echo returned a different tensor")
    finally:
        session.close()
    return stage_cost(with_s, without_s)


STAGES = (
    ("client packing", "build", ""),
    ("client finiteness", "finite", ""),
    ("server finiteness", "", "finite"),
    ("server value checks", "", "values"),
    ("server shape checks", "", "shapes"),
    ("server reply build", "", "reply"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="step pairs per stage")
    ns = parser.parse_args()
    if ns.steps < 2:
        parser.error(f"--steps: must be >= 2 (quartiles of the pairs), got {ns.steps}")
    torch.set_num_threads(1)
    child, address = wt.start_child()
    try:
        print("# wire step costs: one stream per stage, the stage left out of half its steps")
        print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
        print(
            f"echo: {wt.ECHO_SHAPE} fp32 + mask + labels up, the gradient down, validated, "
            f"256 KiB chunks, {ns.steps} step pairs per stage"
        )
        print("| stage | paired with / without (IQR) | % of a step | us |")
        print("|---|---|---|---|")
        for name, client_skip, server_skip in STAGES:
            q2, q1, q3, us = run_stage(address, ns.steps, client_skip, server_skip)
            print(f"| {name} | {q2:.3f} ({q1:.3f}-{q3:.3f}) | {100 * (q2 - 1):+.1f} | {us:+.0f} |")
    finally:
        wt.stop_child(child)
    return 0


if __name__ == "__main__":
    sys.exit(main())
