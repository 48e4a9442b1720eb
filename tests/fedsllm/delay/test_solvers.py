"""The exact (Lambert W) and cvxpy solvers of docs/MODEL.md section 5: agreement and optimality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsllm.delay.convex import certify
from fedsllm.delay.rates import (
    client_round_times,
    global_rounds,
    local_iterations,
    round_terms,
)
from fedsllm.delay.solvers import (
    CvxpyInner,
    exact_round_time,
    max_eta,
    solve_allocation,
)
from fedsllm.errors import AllocationError, ConfigError

from .conftest import random_inputs

REL = 1e-5


def _exact_is_certified(inputs, alloc, n: float) -> bool:
    """The exact answer passes the same optimality certificate as cvxpy's (convex.certify)."""
    fixed, need = round_terms(inputs, n)
    shares = alloc * (inputs.bandwidth_hz / alloc.sum())
    return certify(fixed, need, shares, inputs.snr_hz, inputs.bandwidth_hz, rtol=1e-8)


def _assert_agree(exact, cvx, inputs) -> None:
    """T and every b_k within REL, relative, no absolute floor: cvxpy's shares are
    certified (every client finishes within 1e-9 of the slowest, the band is full),
    so even the smallest share is pinned down to ~1e-9 relative."""
    assert cvx.total_delay_s == pytest.approx(exact.total_delay_s, rel=REL)
    assert cvx.eta == pytest.approx(exact.eta, rel=1e-3)
    np.testing.assert_allclose(cvx.bandwidth_hz, exact.bandwidth_hz, rtol=REL, atol=0)
    np.testing.assert_allclose(cvx.bandwidth_int_hz, exact.bandwidth_int_hz, rtol=REL, atol=0)
    np.testing.assert_allclose(cvx.client_round_s, exact.client_round_s, rtol=REL)


def _check_pair(inputs, exact, cvx) -> None:
    assert cvx.backend in ("CLARABEL", "SCS")
    if _exact_is_certified(inputs, exact.bandwidth_hz, exact.n):
        _assert_agree(exact, cvx, inputs)
    else:
        # The known fault of rates.bandwidth_for_rate near the rate ceiling (see
        # test_exact_regression_near_rate_ceiling): cvxpy must then do strictly better.
        assert cvx.total_delay_s < exact.total_delay_s * (1 - REL)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    k=st.one_of(st.integers(1, 30), st.integers(31, 200)),
    eta=st.floats(0.05, 0.9),
)
def test_exact_and_cvxpy_agree_at_fixed_eta(seed: int, k: int, eta: float) -> None:
    """cvxpy must answer (never refuse) on realistic scenarios up to K = 200, and agree."""
    inputs = random_inputs(seed, k)
    _check_pair(
        inputs, solve_allocation(inputs, "exact", eta), solve_allocation(inputs, "cvxpy", eta)
    )


@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 20))
def test_exact_and_cvxpy_agree_on_the_optimum(seed: int, k: int) -> None:
    inputs = random_inputs(seed, k)
    _check_pair(inputs, solve_allocation(inputs, "exact"), solve_allocation(inputs, "cvxpy"))


@pytest.mark.parametrize("seed", range(6))
def test_cvxpy_solves_ordinary_scenarios(seed: int) -> None:
    """On these instances cvxpy must answer (not refuse) and agree with the lemma."""
    inputs = random_inputs(seed, 8)
    exact = solve_allocation(inputs, "exact", 0.5)
    cvx = solve_allocation(inputs, "cvxpy", 0.5)
    _assert_agree(exact, cvx, inputs)


def test_exact_and_cvxpy_agree_on_the_optimum_at_k_200() -> None:
    """The whole eta search with cvxpy at K = 200 (benchmarks/solver_scaling.py times it)."""
    inputs = random_inputs(1, 200)
    _assert_agree(solve_allocation(inputs, "exact"), solve_allocation(inputs, "cvxpy"), inputs)


@pytest.mark.parametrize("seed", [1, 9])
def test_exact_and_cvxpy_agree_at_large_k(seed: int) -> None:
    inputs = random_inputs(seed, 200)
    n = local_iterations(0.5, inputs.v)
    t_exact, b_exact = exact_round_time(inputs, n)
    inner = CvxpyInner(inputs)
    t_cvx, b_cvx = inner.solve(n)
    assert inner.backend == "CLARABEL"
    assert t_cvx == pytest.approx(t_exact, rel=REL)
    np.testing.assert_allclose(b_cvx, b_exact, rtol=REL, atol=0)


def test_exact_regression_near_rate_ceiling() -> None:
    """A client asked for a rate within 1e-5 of its ceiling: the lemma used to
    lose digits at W_-1's branch point and return a share 14% short, so the
    exact search stopped on a wrong round time with the band under-filled."""
    inputs = random_inputs(2006, 50)
    n = local_iterations(0.5, inputs.v)
    t_exact, b_exact = exact_round_time(inputs, n)
    t_cvx, b_cvx = CvxpyInner(inputs).solve(n)
    assert b_exact.sum() == pytest.approx(inputs.bandwidth_hz, rel=1e-10)
    assert t_exact == pytest.approx(t_cvx, rel=REL)


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 5), (2, 40), (3, 1000)])
def test_optimality_conditions(seed: int, k: int) -> None:
    inputs = random_inputs(seed, k)
    alloc = solve_allocation(inputs, "exact")
    b = alloc.bandwidth_hz
    # Everyone finishes the round together and the band is fully used.
    np.testing.assert_allclose(alloc.client_round_s, alloc.round_time_s, rtol=1e-9)
    assert b.sum() == pytest.approx(inputs.bandwidth_hz, rel=1e-10)
    assert alloc.total_delay_s == pytest.approx(alloc.num_rounds * alloc.round_time_s)
    # No move of bandwidth between two clients lowers the round time.
    rng = np.random.default_rng(seed)
    for _ in range(min(50, k * k)):
        if k == 1:
            break
        i, j = rng.choice(k, 2, replace=False)
        delta = 1e-4 * b[i]
        moved = b.copy()
        moved[i] -= delta
        moved[j] += delta
        assert client_round_times(inputs, moved, alloc.n).max() > alloc.round_time_s

    # No feasible change of eta lowers T (the upper end is n(eta) = 1).
    def total(eta: float) -> float:
        t, _ = exact_round_time(inputs, local_iterations(eta, inputs.v))
        return global_rounds(eta, inputs.a) * t

    top = max_eta(inputs.v, 1.0)
    for step in (1e-3, 1e-5):
        for eta in (alloc.eta * (1 - step), min(alloc.eta * (1 + step), top)):
            assert total(eta) >= alloc.total_delay_s * (1 - 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eta_beats_a_fine_grid(seed: int) -> None:
    inputs = random_inputs(seed, 6)
    alloc = solve_allocation(inputs, "exact")
    top = max_eta(inputs.v, 1.0)
    best = math.inf
    for eta in np.linspace(1e-4, top, 3000):
        t, _ = exact_round_time(inputs, local_iterations(float(eta), inputs.v))
        best = min(best, global_rounds(float(eta), inputs.a) * t)
    assert alloc.total_delay_s <= best * (1 + 1e-10)


def test_free_eta_search_covers_n_below_one() -> None:
    inputs = random_inputs(4, 5)
    free = solve_allocation(inputs, "exact", min_local_iterations=0.0)
    floor = solve_allocation(inputs, "exact")
    assert free.total_delay_s <= floor.total_delay_s * (1 + 1e-12)
    assert floor.n >= 1.0 - 1e-12


def test_single_client_takes_the_whole_band() -> None:
    inputs = random_inputs(5, 1)
    alloc = solve_allocation(inputs, "exact", 0.3)
    assert alloc.bandwidth_hz[0] == pytest.approx(inputs.bandwidth_hz, rel=1e-12)
    expected = client_round_times(inputs, np.array([inputs.bandwidth_hz]), alloc.n)[0]
    assert alloc.round_time_s == pytest.approx(expected, rel=1e-12)


def test_identical_clients_get_equal_shares() -> None:
    inputs = random_inputs(6, 7, identical=True)
    alloc = solve_allocation(inputs, "exact")
    np.testing.assert_allclose(alloc.bandwidth_hz, inputs.bandwidth_hz / 7, rtol=1e-9)


def test_more_bandwidth_never_hurts() -> None:
    delays = [
        solve_allocation(random_inputs(7, 10, bandwidth_hz=b), "exact").total_delay_s
        for b in (1e6, 5e6, 20e6, 100e6)
    ]
    assert all(x > y for x, y in zip(delays, delays[1:], strict=False))


def test_integer_iterations_reported() -> None:
    inputs = random_inputs(8, 4)
    alloc = solve_allocation(inputs, "exact", 0.3)
    assert alloc.n_int == math.ceil(alloc.n)
    assert alloc.total_delay_int_s >= alloc.total_delay_s
    assert alloc.bandwidth_int_hz.sum() == pytest.approx(inputs.bandwidth_hz, rel=1e-10)
    assert alloc.to_dict()["num_rounds_int"] == math.ceil(alloc.num_rounds)


def test_bad_inputs_give_documented_errors() -> None:
    inputs = random_inputs(9, 3)
    gains = inputs.gain.copy()
    gains[1] = 0.0
    with pytest.raises(AllocationError) as err:
        solve_allocation(inputs.replace(gain=gains), "exact")
    assert "client 1" in str(err.value) and err.value.status == "infeasible"
    with pytest.raises(AllocationError):
        solve_allocation(inputs.replace(gain=gains), "cvxpy")
    for eta in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError) as cerr:
            solve_allocation(inputs, "exact", eta)
        assert cerr.value.path == "eta"
    with pytest.raises(ConfigError) as cerr:
        solve_allocation(inputs, "ipopt")
    assert cerr.value.path == "policy.solver"


def test_integer_n_is_solved_once() -> None:
    """At an eta whose n(eta) is already an integer, the n_int answer is the n answer."""
    from fedsllm.delay.integer import eta_for_iterations

    inputs = random_inputs(8, 6)
    alloc = solve_allocation(inputs, "exact", eta_for_iterations(3, inputs.v))
    assert alloc.n_int == 3
    assert alloc.round_time_int_s == alloc.round_time_s
    np.testing.assert_array_equal(alloc.bandwidth_int_hz, alloc.bandwidth_hz)


def test_cvxpy_inner_moves_to_new_inputs_without_recompiling() -> None:
    first, second = random_inputs(11, 8), random_inputs(12, 8)
    n = local_iterations(0.4, first.v)
    inner = CvxpyInner(first)
    inner.solve(n)
    stage1 = inner._convex._stage1
    inner.set_inputs(second)
    t, shares = inner.solve(n)
    assert inner._convex._stage1 is stage1
    t_fresh, shares_fresh = CvxpyInner(second).solve(n)
    assert t == pytest.approx(t_fresh, rel=1e-9)
    np.testing.assert_allclose(shares, shares_fresh, rtol=1e-6)
    t_exact, _ = exact_round_time(second, n)
    assert t == pytest.approx(t_exact, rel=REL)
    with pytest.raises(ConfigError) as err:
        inner.set_inputs(random_inputs(13, 5))
    assert err.value.path == "snr_hz"
