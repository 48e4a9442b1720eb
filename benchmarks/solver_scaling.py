"""Solve time of the allocation against the number of clients K, for both solvers.

Prints, per K, the median wall time of a whole solve (eta search + shares)
over repeats, for the exact lemma solver (K up to 10000) and the cvxpy one
(K up to 1000; it also reports how often cvxpy refused an instance it could
not certify). Goals from issue 3: exact K=1000 < 100 ms, K=10000 < 1 s; cvxpy
K=200 < 2 s for the whole eta search. Inputs are the random channel
scenarios of the tests. A second table runs the cvxpy inner problem alone
(eta = 0.5) over `--scenarios` random scenarios per K and prints how many it
refused, the statuses of the answers it certified, and the worst relative
gap to the exact solver on T and on any b_k (over scenarios where the exact
answer passes the same certificate; the others are counted apart).

    .venv/bin/python benchmarks/solver_scaling.py [--repeats 5] [--scenarios 40]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fedsllm" / "delay"))


def main() -> None:
    import cvxpy
    import scipy
    from conftest import random_inputs  # the tests' scenario generator

    from fedsllm.delay.solvers import solve_allocation
    from fedsllm.errors import AllocationError

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", type=int, default=40)
    args = parser.parse_args()
    print(
        f"host {platform.node()} python {platform.python_version()} numpy {np.__version__} "
        f"scipy {scipy.__version__} cvxpy {cvxpy.__version__}"
    )
    print("solver = whole eta search; solver@eta = shares at eta=0.5 (two inner solves)")
    print(f"{'solver':10} {'K':>6} {'median s':>10} {'min s':>8} {'refused':>8}")
    # Warm imports so that the first row is not an import time.
    solve_allocation(random_inputs(0, 3), "exact")
    solve_allocation(random_inputs(0, 3), "cvxpy", 0.5)
    cases = (
        ("exact", None, (10, 100, 1000, 10000)),
        ("cvxpy", None, (10, 100, 200, 500)),
        ("exact", 0.5, (10, 100, 200, 1000)),
        ("cvxpy", 0.5, (10, 100, 200, 500, 1000)),
    )
    for solver, eta, sizes in cases:
        label = solver if eta is None else f"{solver}@eta"
        for k in sizes:
            times = []
            refused = 0
            for rep in range(args.repeats):
                inputs = random_inputs(rep, k)
                start = time.perf_counter()
                try:
                    solve_allocation(inputs, solver, eta)
                except AllocationError:
                    refused += 1
                    continue
                finally:
                    elapsed = time.perf_counter() - start
                times.append(elapsed)
            med = statistics.median(times) if times else float("nan")
            low = min(times) if times else float("nan")
            print(f"{label:10} {k:>6} {med:>10.4f} {low:>8.4f} {refused:>5}/{args.repeats}")
    reliability(args.scenarios)


def reliability(num_scenarios: int) -> None:
    """Refusals and agreement of the cvxpy inner problem over random scenarios."""
    from collections import Counter

    from conftest import random_inputs

    from fedsllm.delay.convex import ConvexInner, certify
    from fedsllm.delay.rates import local_iterations, round_terms
    from fedsllm.delay.solvers import exact_round_time
    from fedsllm.errors import AllocationError

    print(f"\ncvxpy inner problem at eta=0.5 over {num_scenarios} scenarios per K (seeds 1000+)")
    print(
        f"{'K':>6} {'refused':>8} {'worst dT':>9} {'worst db':>9} {'exact bad':>9} "
        f"{'median s':>9} {'solves':>6}  statuses"
    )
    for k in (50, 100, 200, 500, 1000):
        refused = exact_bad = 0
        worst_t = worst_b = 0.0
        times: list[float] = []
        solves: list[int] = []
        statuses: Counter[str] = Counter()
        for seed in range(num_scenarios):
            inputs = random_inputs(1000 + seed, k)
            n = local_iterations(0.5, inputs.v)
            fixed, need = round_terms(inputs, n)
            t_exact, b_exact = exact_round_time(inputs, n)
            start = time.perf_counter()
            try:
                sol = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz).solve(fixed, need)
            except AllocationError as err:
                refused += 1
                statuses[f"refused: {err.status}"] += 1
                continue
            times.append(time.perf_counter() - start)
            solves.append(sol.num_solves)
            statuses[f"{sol.backend} {sol.status}"] += 1
            full = b_exact * (inputs.bandwidth_hz / b_exact.sum())
            if not certify(fixed, need, full, inputs.snr_hz, inputs.bandwidth_hz, rtol=1e-8):
                exact_bad += 1
                continue
            worst_t = max(worst_t, abs(sol.round_time_s - t_exact) / t_exact)
            worst_b = max(worst_b, float(np.max(np.abs(sol.shares_hz - b_exact) / b_exact)))
        med = statistics.median(times) if times else float("nan")
        mean_solves = statistics.mean(solves) if solves else float("nan")
        print(
            f"{k:>6} {refused:>4}/{num_scenarios:<3} {worst_t:>9.1e} {worst_b:>9.1e} "
            f"{exact_bad:>9} {med:>9.4f} {mean_solves:>6.2f}  {dict(statuses)}"
        )


if __name__ == "__main__":
    main()
