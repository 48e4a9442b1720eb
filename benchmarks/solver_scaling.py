"""Solve time of the allocation against the number of clients K, for both solvers.

Prints, per K, the median wall time of a whole solve (eta search + shares)
over repeats, for the exact lemma solver (K up to 10000) and the cvxpy one
(K up to 200; it also reports how often cvxpy refused an instance it could
not check). Goals from issue 3: exact K=1000 < 100 ms, K=10000 < 1 s; cvxpy
K=200 < 2 s. Inputs are the random channel scenarios of the tests.

    .venv/bin/python benchmarks/solver_scaling.py [--repeats 5]
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
        ("cvxpy", None, (10, 100, 200)),
        ("exact", 0.5, (10, 100, 200)),
        ("cvxpy", 0.5, (10, 100, 200)),
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


if __name__ == "__main__":
    main()
