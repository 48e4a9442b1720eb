"""The integer plan (fedsllm/delay/integer.py) against brute force and the
continuous optimum it replaces."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsllm.config import load_scenario
from fedsllm.delay.inputs import delay_inputs
from fedsllm.delay.integer import best_integer_iterations, eta_for_iterations, integer_delay
from fedsllm.delay.solvers import exact_round_time, solve_allocation


def test_eta_for_iterations_inverts_n_of_eta() -> None:
    for v in (1.5, 2.0, 6.0):
        for n in (1, 2, 7):
            eta = eta_for_iterations(n, v)
            assert v * math.log2(1 / eta) == pytest.approx(n)


def test_integer_delay_rounds_the_rounds_up() -> None:
    # a=4, v=6, n=6 -> eta=0.5 -> N = 8 exactly.
    assert integer_delay(6, 2.0, 4.0, 6.0) == pytest.approx(16.0)
    # n=1 -> eta = 2^(-1/6) = 0.8909 -> N = 36.66 -> 37 rounds.
    assert integer_delay(1, 1.0, 4.0, 6.0) == pytest.approx(37.0)


@pytest.mark.parametrize(("a", "v"), [(1.0, 2.0), (4.0, 6.0), (1.0, 10.0), (3.0, 1.0)])
def test_best_integer_matches_brute_force(a: float, v: float) -> None:
    inputs = delay_inputs(load_scenario(overrides=[f"convergence.a={a}", f"convergence.v={v}"]))

    def round_time(n: int) -> float:
        return exact_round_time(inputs, float(n))[0]

    n = best_integer_iterations(round_time, a, v, n_hint=1.0)
    brute = {m: integer_delay(m, round_time(m), a, v) for m in range(1, 60)}
    assert brute[n] == pytest.approx(min(brute.values()))
    # Never worse than rounding the continuous optimum up.
    cont = solve_allocation(inputs)
    assert brute[n] <= integer_delay(cont.n_int, round_time(cont.n_int), a, v) + 1e-12


def test_search_is_never_worse_than_equal_shares() -> None:
    """The case that motivated it: a=1, v=2 made the rounded continuous optimum
    lose against equal shares at eta 0.5."""
    inputs = delay_inputs(load_scenario(overrides=["convergence.a=1.0", "convergence.v=2.0"]))
    k = inputs.num_clients
    equal = np.full(k, inputs.bandwidth_hz / k)
    from fedsllm.delay.rates import client_round_times

    def opt_round(n: int) -> float:
        return exact_round_time(inputs, float(n))[0]

    n = best_integer_iterations(opt_round, 1.0, 2.0, n_hint=1.0)
    n_equal = 2  # v log2(1/0.5) = 2
    equal_total = integer_delay(
        n_equal, float(np.max(client_round_times(inputs, equal, 2))), 1.0, 2.0
    )
    assert integer_delay(n, opt_round(n), 1.0, 2.0) <= equal_total


@pytest.mark.parametrize("hint", [math.nan, math.inf, 0.0])
def test_degenerate_hint_is_a_typed_error(hint: float) -> None:
    from fedsllm.errors import AllocationError

    with pytest.raises(AllocationError, match="n_hint"):
        best_integer_iterations(lambda n: 1.0, 4.0, 6.0, n_hint=hint)
