"""The plan a real run can execute: an integer number of local iterations n and
an integer number of rounds N (docs/MODEL.md section 4: "in a real run n is rounded
up to an integer").

The continuous optimum of section 5 rounds badly: with cheap rounds it sits
near n(eta) = 1, and rounding n up and N = a / (1 - eta) up can leave it
slower than the baseline it is compared with. Here the eta search runs over
the values a real run can take, eta_n = 2^(-n / v) for integer n (so n(eta_n)
= n exactly), scoring each by the delay the run will have: ceil(N(eta_n))
rounds of the round time at n iterations. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedsllm.delay.rates import global_rounds, round_up
from fedsllm.errors import AllocationError


def eta_for_iterations(n: int, v: float) -> float:
    """The accuracy whose n(eta) = v log2(1/eta) is exactly n."""
    return 2.0 ** (-n / v)


def integer_delay(n: int, round_time_s: float, a: float, v: float) -> float:
    """Total delay of a run with n local iterations: ceil(N(eta_n)) * round time."""
    return round_up(global_rounds(eta_for_iterations(n, v), a)) * round_time_s


def best_integer_iterations(
    round_time: Callable[[int], float], a: float, v: float, n_hint: float
) -> int:
    """The integer n minimizing ceil(N(eta_n)) * round_time(n).

    `n_hint` is the continuous optimum; the search covers 1..max(8, ceil(4 n_hint) + 8),
    far past where more local work stops paying for fewer rounds (N(eta_n)
    falls to its floor of ceil(a) while the round time keeps growing
    linearly in n).
    """
    if not (math.isfinite(n_hint) and n_hint > 0):
        raise AllocationError(
            f"n_hint={n_hint!r}: the continuous optimum must be finite and > 0", status="degenerate"
        )
    upper = max(8, int(math.ceil(4 * n_hint)) + 8)
    best_n, best_t = 1, math.inf
    for n in range(1, upper + 1):
        total = integer_delay(n, round_time(n), a, v)
        if total < best_t - 1e-12:
            best_n, best_t = n, total
    return best_n
