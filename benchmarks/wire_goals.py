"""Issue 13's six goals, judged round by round in one run.

    OMP_NUM_THREADS=1 python benchmarks/wire_goals.py [--rounds N] [--reps-scale X]

A run of wire_throughput.py gives each goal one paired ratio. On a host with
two cores that ratio moves by 0.05-0.1 from one run to the next, more than
its own interquartile range says: where the scheduler puts the client's and
the server's threads at the start of a run tends to hold through it. One
run's ratio near a goal's bound therefore says little. This script repeats
the goals' own measurements (wire_throughput's bench_stream and bench_echo,
the same interleaved variants and repetitions as tables (a) and (b)) in
`--rounds` rounds, each against a fresh server process, and prints every
round's six ratios, then, per goal, how many rounds met it and the median
over the rounds.

The goals (the default 256 KiB chunk, paired step-by-step medians):
- a 1.57 MB and a 67 MB upload at >= 0.9 of raw's rate, validation off and on;
- the 1.57 MB activation echo at <= 1.2x raw's time, validation off and on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import wire_throughput as wt

BIG_UPLOAD_BYTES = 64 * 2**20
"""Table (a)'s 67 MB upload."""


@dataclass(frozen=True)
class Goal:
    """One bound on one paired ratio."""

    key: str
    label: str
    bound: float
    at_least: bool
    """True: the ratio must be >= bound (a rate against raw's); False: <= bound
    (a time against raw's)."""

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound


GOALS: tuple[Goal, ...] = (
    Goal("upload_small", "1.57 MB upload, rate / raw", 0.9, True),
    Goal("upload_small_validated", "validated 1.57 MB upload, rate / raw", 0.9, True),
    Goal("upload_big", "67 MB upload, rate / raw", 0.9, True),
    Goal("upload_big_validated", "validated 67 MB upload, rate / raw", 0.9, True),
    Goal("echo", "echo, time / raw", 1.2, False),
    Goal("echo_validated", "validated echo, time / raw", 1.2, False),
)


@dataclass(frozen=True)
class GoalSummary:
    goal: Goal
    met: int
    rounds: int
    median: float
    low: float
    high: float


def summarize(
    rounds: Sequence[dict[str, float]], goals: Sequence[Goal] = GOALS
) -> list[GoalSummary]:
    """Per goal: the rounds that met it, and the median and range of its ratio."""
    if not rounds:
        raise ValueError("no rounds to summarize")
    out = []
    for goal in goals:
        ratios = [r[goal.key] for r in rounds]
        out.append(
            GoalSummary(
                goal,
                sum(goal.met(x) for x in ratios),
                len(ratios),
                statistics.median(ratios),
                min(ratios),
                max(ratios),
            )
        )
    return out


def measure_round(address: str, reps: tuple[int, int, int]) -> dict[str, float]:
    """One round's six ratios against the server at `address`: each upload's
    rate over raw's (raw's time over the project's, pair by pair) and the
    echo's time over raw's, as tables (a) and (b) compute them."""
    reps_small, reps_big, reps_echo = reps
    small = wt.bench_stream(address, wt.UPLOAD_BYTES, wt.DEFAULT_CHUNK, reps_small)
    big = wt.bench_stream(address, BIG_UPLOAD_BYTES, wt.DEFAULT_CHUNK, reps_big)
    echo = wt.bench_echo(address, wt.DEFAULT_CHUNK, reps_echo)
    return {
        "upload_small": wt.paired_median(small["raw"], small["project"]),
        "upload_small_validated": wt.paired_median(small["raw"], small["validated"]),
        "upload_big": wt.paired_median(big["raw"], big["project"]),
        "upload_big_validated": wt.paired_median(big["raw"], big["validated"]),
        "echo": wt.paired_median(echo["project"], echo["raw"]),
        "echo_validated": wt.paired_median(echo["validated"], echo["raw"]),
    }


def run_rounds(
    rounds: int,
    reps: tuple[int, int, int],
    start: Callable[[], tuple[object, str, Callable[[], None]]],
    report: Callable[[int, float, dict[str, float]], None] = lambda *_: None,
) -> list[dict[str, float]]:
    """`rounds` rounds, each against a server from `start()` (its pid or
    None, its address, and how to stop it), stopped after its round whether
    the round failed or not; `report(i, load, ratios)` after each."""
    results = []
    for i in range(rounds):
        pid, address, stop = start()
        try:
            wt.SERVER_PID = pid  # type: ignore[assignment]
            load = os.getloadavg()[0]
            ratios = measure_round(address, reps)
        finally:
            wt.SERVER_PID = None
            stop()
        results.append(ratios)
        report(i, load, ratios)
    return results


def _start_child() -> tuple[int, str, Callable[[], None]]:
    child, address = wt.start_child(wt.__file__)

    def stop() -> None:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(timeout=30)

    return child.pid, address, stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=8, help="rounds, each with a fresh server (default 8)"
    )
    parser.add_argument(
        "--reps-scale",
        type=float,
        default=1.0,
        help="multiply wire_throughput's repetition counts (150, 20, 300; default 1.0)",
    )
    ns = parser.parse_args(argv)
    if ns.rounds < 1:
        parser.error(f"--rounds: must be at least 1, got {ns.rounds}")
    if ns.reps_scale <= 0:
        parser.error(f"--reps-scale: must be positive, got {ns.reps_scale}")
    torch.set_num_threads(1)
    reps = tuple(max(1, round(r * ns.reps_scale)) for r in (150, 20, 300))
    print("# wire goals (issue 13), round by round")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, cpus={os.cpu_count()}")
    print(
        f"rounds: {ns.rounds}, each against a fresh server process; repetitions per "
        f"round: 1.57 MB {reps[0]}, 67 MB {reps[1]}, echo {reps[2]} (wire_throughput's); "
        f"chunk {wt.DEFAULT_CHUNK // 1024} KiB; paired step-by-step medians"
    )
    print("\n| round | load at start | " + " | ".join(g.label for g in GOALS) + " |")
    print("|---|---|" + "---|" * len(GOALS))

    def report(i: int, load: float, ratios: dict[str, float]) -> None:
        cells = " | ".join(f"{ratios[g.key]:.2f}" for g in GOALS)
        print(f"| {i + 1} | {load:.2f} | {cells} |", flush=True)

    results = run_rounds(ns.rounds, reps, _start_child, report)  # type: ignore[arg-type]
    print("\n| goal | bound | rounds met | median | range |")
    print("|---|---|---|---|---|")
    for s in summarize(results):
        bound = f"{'>=' if s.goal.at_least else '<='} {s.goal.bound}"
        print(
            f"| {s.goal.label} | {bound} | {s.met} of {s.rounds} | {s.median:.2f} "
            f"| {s.low:.2f}-{s.high:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
