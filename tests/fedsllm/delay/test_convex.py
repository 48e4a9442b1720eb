"""The cvxpy inner problem of fedsllm.delay.convex: its certificate, its fallbacks, large K."""

from __future__ import annotations

import numpy as np
import pytest

from fedsllm.delay.convex import CERT_RTOL, ConvexInner, certify, finish_spread
from fedsllm.delay.rates import local_iterations, rate_bps, round_terms
from fedsllm.delay.solvers import exact_round_time
from fedsllm.errors import AllocationError

from .conftest import random_inputs


def _problem(seed: int, k: int, eta: float = 0.5):
    inputs = random_inputs(seed, k)
    fixed, need = round_terms(inputs, local_iterations(eta, inputs.v))
    return inputs, fixed, need


def _times(inputs, fixed, need, shares) -> np.ndarray:
    return fixed + need / rate_bps(shares, inputs.snr_hz)


def test_answer_is_certified_and_the_certificate_is_a_lower_bound() -> None:
    """No random allocation of the band beats T (1 - eps): what the certificate claims."""
    inputs, fixed, need = _problem(11, 30)
    sol = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz).solve(fixed, need)
    assert certify(fixed, need, sol.shares_hz, inputs.snr_hz, inputs.bandwidth_hz)
    assert sol.spread <= CERT_RTOL
    assert sol.shares_hz.sum() == pytest.approx(inputs.bandwidth_hz, rel=1e-12)
    assert sol.round_time_s == pytest.approx(_times(inputs, fixed, need, sol.shares_hz).max())
    rng = np.random.default_rng(0)
    # Random allocations, and small perturbations of the answer that keep the sum.
    draws = rng.dirichlet(np.ones(30), 2000) * inputs.bandwidth_hz
    noise = sol.shares_hz * (1 + 1e-3 * rng.standard_normal((2000, 30)))
    noise *= inputs.bandwidth_hz / noise.sum(axis=1, keepdims=True)
    for shares in np.vstack([draws, noise]):
        assert _times(inputs, fixed, need, shares).max() >= sol.round_time_s * (1 - CERT_RTOL)


def test_certificate_rejects_what_is_not_optimal() -> None:
    inputs, fixed, need = _problem(12, 10)
    sol = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz).solve(fixed, need)
    snr, total = inputs.snr_hz, inputs.bandwidth_hz
    moved = sol.shares_hz.copy()
    moved[0] *= 1 + 1e-6
    moved[1] = total - (moved.sum() - moved[1])  # still fills the band
    assert finish_spread(fixed, need, moved, snr) > CERT_RTOL
    assert not certify(fixed, need, moved, snr, total)
    # Equal finish times but bandwidth left over: not optimal either.
    assert not certify(fixed, need, sol.shares_hz * 0.999, snr, total)
    zero = sol.shares_hz.copy()
    zero[3] = 0.0
    assert not certify(fixed, need, zero, snr, total)


def test_polish_is_small_next_to_what_the_solver_found() -> None:
    """The shares come from cvxpy; the Newton polish only moves them in the last digits."""
    inputs, fixed, need = _problem(13, 200)
    sol = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz).solve(fixed, need)
    rel = np.abs(sol.raw_shares_hz - sol.shares_hz) / sol.shares_hz
    assert np.median(rel) < 1e-4
    assert sol.num_solves >= 2 and sol.backend == "CLARABEL"


def test_refuses_with_the_statuses_when_no_attempt_certifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cvxpy as cp

    inputs, fixed, need = _problem(14, 20)
    inner = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz)
    monkeypatch.setattr(inner, "attempts", lambda: [(cp.CLARABEL, {"max_iter": 2})])
    with pytest.raises(AllocationError) as err:
        inner.solve(fixed, need)
    assert err.value.status == "CLARABEL stage 2: user_limit"
    assert "stage 1: user_limit" in str(err.value)


def test_falls_back_to_the_next_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    import cvxpy as cp

    inputs, fixed, need = _problem(15, 20)
    t_exact, _ = exact_round_time(inputs, local_iterations(0.5, inputs.v))
    inner = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz)
    attempts = [
        (cp.CLARABEL, {"max_iter": 2}),
        (cp.SCS, {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 20_000}),
    ]
    monkeypatch.setattr(inner, "attempts", lambda: attempts)
    sol = inner.solve(fixed, need)
    assert sol.backend == "SCS"
    assert sol.round_time_s == pytest.approx(t_exact, rel=1e-9)
    # A Clarabel attempt after a failed one does not inherit its settings from cvxpy's cache.
    attempts[1] = (cp.CLARABEL, {"max_iter": 200})
    assert inner.solve(fixed, need).backend == "CLARABEL"


@pytest.mark.parametrize("seed,k", [(21, 1000), (22, 500)])
def test_large_k_is_solved_and_agrees(seed: int, k: int) -> None:
    inputs, fixed, need = _problem(seed, k)
    t_exact, b_exact = exact_round_time(inputs, local_iterations(0.5, inputs.v))
    sol = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz).solve(fixed, need)
    assert sol.round_time_s == pytest.approx(t_exact, rel=1e-9)
    np.testing.assert_allclose(sol.shares_hz, b_exact, rtol=1e-7)


def test_zero_gain_is_infeasible() -> None:
    inputs = random_inputs(16, 3)
    snr = inputs.snr_hz.copy()
    snr[2] = 0.0
    with pytest.raises(AllocationError) as err:
        ConvexInner(snr, inputs.bandwidth_hz)
    assert "client 2" in str(err.value) and err.value.status == "infeasible"
