"""Delay-minimizing allocation of docs/MODEL.md section 5: the exact lemma solver and the cvxpy one.

Both minimize T = N(eta) * max_k round_k(eta, b_k) over eta and the shares b,
with the same outer one-dimensional search over eta (grid bracket in
logit(eta), then bounded Brent) and different inner problems for a fixed
eta: `exact` inverts the rate with the Lambert W lemma and finds the common
round time by safeguarded Newton on sum_k b_k(t) = B; `cvxpy` solves the
convex program in DCP/DPP form with Clarabel (fedsllm.delay.convex: scaled
per client, polished, and certified). Pure functions: no I/O, no logging, no clock.
Baselines with given shares (section 5) live in fedsllm.delay.policies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsllm.delay.inputs import DelayInputs
from fedsllm.delay.rates import (
    LN2,
    bandwidth_for_rate,
    check_eta,
    client_round_times,
    global_rounds,
    local_iterations,
    rate_bps,
    rate_slope,
    round_terms,
    round_up,
)
from fedsllm.errors import AllocationError, ConfigError

SOLVER_NAMES = ("exact", "cvxpy")

LOGIT_RANGE = (-9.0, 9.0)
"""eta searched within logit^-1 of this: about [1.2e-4, 1 - 1.2e-4]."""
NUM_GRID = 13
"""Grid points of the bracketing pass over logit(eta)."""
BRENT_XATOL = 1e-9
"""Absolute tolerance of the refinement, in logit(eta)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """One policy's result: accuracy, iterations, rounds, shares and delays (docs/MODEL.md 3-5).

    Continuous quantities are the model's; the `_int` ones are what a real
    run does with n rounded up (`bandwidth_int_hz` are the shares that are
    optimal, or simply kept, for n_int). Arrays have shape (K,).
    """

    policy: str
    solver: str
    """exact, cvxpy, or none when the policy fixes the shares."""
    backend: str
    """What computed it: lambertw, CLARABEL, SCS, or closed_form."""
    status: str
    eta: float
    n: float
    """Local iterations per round n(eta), continuous."""
    n_int: int
    num_rounds: float
    """Global rounds N(eta), continuous."""
    total_delay_s: float
    """T = N(eta) * round_time_s."""
    round_time_s: float
    bandwidth_hz: np.ndarray
    """b_k; for policy random the mean over draws."""
    rate_bps: np.ndarray
    client_round_s: np.ndarray
    total_delay_int_s: float
    """N(eta) * round_time_int_s: the delay with n_int local iterations."""
    round_time_int_s: float
    bandwidth_int_hz: np.ndarray
    num_draws: int = 1

    @property
    def num_rounds_int(self) -> int:
        return round_up(self.num_rounds)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        out["num_rounds_int"] = self.num_rounds_int
        return out


def _check_solvable(inputs: DelayInputs) -> None:
    snr = inputs.snr_hz
    bad = np.flatnonzero(~(np.isfinite(snr) & (snr > 0)))
    if bad.size:
        i = int(bad[0])
        raise AllocationError(
            f"client {i} has rate ceiling {snr[i] / LN2!r} bit/s (gain {inputs.gain[i]!r}): "
            "no bandwidth lets it finish a round",
            status="infeasible",
        )


def _equal_share_time(inputs: DelayInputs, fixed: np.ndarray, need: np.ndarray) -> float:
    share = np.full(inputs.num_clients, inputs.bandwidth_hz / inputs.num_clients)
    return float(np.max(fixed + need / rate_bps(share, inputs.snr_hz)))


def exact_round_time(inputs: DelayInputs, n: float) -> tuple[float, np.ndarray]:
    """min over b of max_k round_k for fixed n: the lemma plus a search on t (section 5).

    Every client finishes at the common time t; b_k(t) = lemma(C_k / (t - fixed_k))
    decreases and is convex in t, so Newton on log sum_k b_k(t) = log B, kept
    inside a bisection bracket, converges from either side. The bracket
    starts at (max_k fixed_k + C_k / ceiling_k, equal-share round time].
    Returns (round time s, shares Hz summing to at most B).
    """
    t, shares, _ = _exact_round_time(inputs, n)
    return t, shares


def _exact_round_time(
    inputs: DelayInputs, n: float, start_fraction: float | None = None
) -> tuple[float, np.ndarray, float]:
    """exact_round_time, also taking and returning the answer's place in the initial bracket
    ((t - lo) / (hi - lo)), which predicts the next answer of the eta search well: the
    search starts there (`start_fraction`), else at the bracket's upper end."""
    _check_solvable(inputs)
    fixed, need = round_terms(inputs, n)
    snr = inputs.snr_hz
    total = inputs.bandwidth_hz
    lo = float(np.max(fixed + need / (snr / LN2)))
    hi = _equal_share_time(inputs, fixed, need)
    lo0, hi0 = lo, hi
    t = hi
    if start_fraction is not None and 0.0 < start_fraction < 1.0:
        t = lo + start_fraction * (hi - lo)
    log_total = math.log(total)
    shares = np.full(inputs.num_clients, total / inputs.num_clients)
    for _ in range(200):
        slack = t - fixed
        shares = bandwidth_for_rate(need / slack, snr)
        ssum = float(shares.sum())
        excess = ssum - total
        if excess > 0:
            lo = t
        else:
            hi = t
        if abs(excess) <= 1e-12 * total or hi - lo <= 4e-16 * hi:
            break
        t_new = math.nan
        if math.isfinite(ssum):
            # d b_k / d t = (1 / R'_k(b_k)) * d rho_k / d t,  d rho_k / d t = -C_k / slack^2;
            # Newton on the log tames the pole of sum_k b_k at the lower end.
            slope = float(np.sum(-(need / slack**2) / rate_slope(shares, snr)))
            if slope < 0 and math.isfinite(slope):
                t_new = t - (math.log(ssum) - log_total) * ssum / slope
        if not lo < t_new < hi:
            t_new = 0.5 * (lo + hi)
        if abs(t_new - t) <= 1e-15 * t:
            break
        t = t_new
    else:
        raise AllocationError(
            f"exact inner solve did not converge at n={n!r}", status="not_converged"
        )
    if not np.all(np.isfinite(shares)):
        shares = bandwidth_for_rate(need / (hi - fixed), snr)
    ssum = float(shares.sum())
    if ssum > total:
        shares = shares * (total / ssum)
    fraction = (t - lo0) / (hi0 - lo0) if hi0 > lo0 else 1.0
    return float(np.max(client_round_times(inputs, shares, n))), shares, fraction


class CvxpyInner:
    """The inner problem of docs/MODEL.md section 5 solved with cvxpy, for one DelayInputs.

    The formulation (per-client scaling, the two stages, the polish) and its
    certificate of optimality live in fedsllm.delay.convex; this class only
    turns n into (fixed_k, C_k). The compiled cvxpy problem depends on K
    alone: `set_inputs` moves one instance to a new round's inputs (same K)
    without recompiling, as the allocation controller does every round.
    Every answer is certified: all clients finish within convex.CERT_RTOL
    of each other with the whole band used, which bounds T against the
    optimum. A solver status other than optimal is used only if its polished
    shares pass that certificate; when no attempt (Clarabel variants, then
    SCS) passes, AllocationError carries the statuses.
    """

    def __init__(self, inputs: DelayInputs) -> None:
        from fedsllm.delay.convex import ConvexInner

        _check_solvable(inputs)
        self._inputs = inputs
        self._convex = ConvexInner(inputs.snr_hz, inputs.bandwidth_hz)
        self.backend = ""
        self.status = ""

    def set_inputs(self, inputs: DelayInputs) -> None:
        """Solve for `inputs` from now on (same number of clients), keeping the compiled problem."""
        _check_solvable(inputs)
        self._convex.set_channel(inputs.snr_hz, inputs.bandwidth_hz)
        self._inputs = inputs

    def solve(self, n: float) -> tuple[float, np.ndarray]:
        """(round time s, shares Hz) for n local iterations, certified optimal within 1e-9."""
        inputs = self._inputs
        fixed, need = round_terms(inputs, n)
        try:
            sol = self._convex.solve(fixed, need)
        except AllocationError as err:
            raise AllocationError(f"at n={n!r}: {err}", status=err.status) from err
        self.backend = sol.backend
        self.status = sol.status
        shares = sol.shares_hz
        return float(np.max(client_round_times(inputs, shares, n))), shares


def max_eta(v: float, min_local_iterations: float) -> float:
    """Largest eta with n(eta) >= min_local_iterations (1 - 1e-12 when the floor is 0).

    docs/MODEL.md section 4 allows any eta in (0, 1), but n(eta) < 1 local
    iteration per round has no meaning in a real run (it would be rounded
    up to 1, and the model's delay would then be far off), so the searches
    default to n >= 1.
    """
    if not (math.isfinite(min_local_iterations) and min_local_iterations >= 0):
        raise ConfigError("min_local_iterations", min_local_iterations, "must be >= 0")
    if min_local_iterations == 0:
        return 1.0 - 1e-12
    return 2.0 ** (-min_local_iterations / v)


def search_eta(objective: Callable[[float], float], eta_max: float = 1.0 - 1e-12) -> float:
    """argmin over eta in (0, eta_max] of `objective`: grid in logit(eta), then bounded Brent.

    docs/MODEL.md section 5 leaves the outer problem one-dimensional but not
    provably unimodal, hence the grid bracket before the local refinement.
    """
    from scipy.optimize import minimize_scalar

    def of_z(z: float) -> float:
        return objective(1.0 / (1.0 + math.exp(-z)))

    z_max = min(LOGIT_RANGE[1], math.log(eta_max / (1.0 - eta_max)))
    z_min = min(LOGIT_RANGE[0], z_max - 1.0)
    grid = np.linspace(z_min, z_max, NUM_GRID)
    values = [of_z(float(z)) for z in grid]
    best = int(np.argmin(values))
    lo = float(grid[max(best - 1, 0)])
    hi = float(grid[min(best + 1, NUM_GRID - 1)])
    res = minimize_scalar(of_z, bounds=(lo, hi), method="bounded", options={"xatol": BRENT_XATOL})
    z = float(res.x) if res.fun <= values[best] else float(grid[best])
    return 1.0 / (1.0 + math.exp(-z))


def _exact_inner(inputs: DelayInputs) -> Callable[[float], tuple[float, np.ndarray]]:
    state: dict[str, float] = {}

    def exact(n: float) -> tuple[float, np.ndarray]:
        # Warm start where the previous eta's answer sat in its bracket: the outer
        # search moves slowly and the answer's place in the bracket barely changes.
        t, shares, state["fraction"] = _exact_round_time(
            inputs, n, start_fraction=state.get("fraction")
        )
        return t, shares

    return exact


def solve_allocation(
    inputs: DelayInputs,
    solver: str = "exact",
    eta: float | None = None,
    policy: str = "optimal",
    min_local_iterations: float = 1.0,
) -> Allocation:
    """Optimal shares, and the optimal eta unless `eta` is given (docs/MODEL.md section 5).

    The eta search keeps n(eta) >= `min_local_iterations` (see `max_eta`;
    0 = the whole open interval). `policy` only labels the result.
    """
    if solver not in SOLVER_NAMES:
        raise ConfigError("policy.solver", solver, f"must be one of {', '.join(SOLVER_NAMES)}")
    cvx = CvxpyInner(inputs) if solver == "cvxpy" else None
    inner = cvx.solve if cvx is not None else _exact_inner(inputs)
    if eta is None:

        def objective(e: float) -> float:
            return global_rounds(e, inputs.a) * inner(local_iterations(e, inputs.v))[0]

        eta = search_eta(objective, max_eta(inputs.v, min_local_iterations))
    eta = check_eta(eta)
    n = local_iterations(eta, inputs.v)
    t, shares = inner(n)
    n_int = round_up(n)
    if math.isclose(n, n_int, rel_tol=1e-12):
        t_int, shares_int = t, shares
    else:
        t_int, shares_int = inner(float(n_int))
    backend = cvx.backend if cvx is not None else "lambertw"
    num_rounds = global_rounds(eta, inputs.a)
    return Allocation(
        policy=policy,
        solver=solver,
        backend=backend,
        status="optimal",
        eta=eta,
        n=n,
        n_int=n_int,
        num_rounds=num_rounds,
        total_delay_s=num_rounds * t,
        round_time_s=t,
        bandwidth_hz=shares,
        rate_bps=rate_bps(shares, inputs.snr_hz),
        client_round_s=client_round_times(inputs, shares, n),
        total_delay_int_s=num_rounds * t_int,
        round_time_int_s=t_int,
        bandwidth_int_hz=shares_int,
    )


def shares_allocation(
    inputs: DelayInputs,
    shares_hz: np.ndarray,
    policy: str,
    eta: float | None = None,
    min_local_iterations: float = 1.0,
) -> Allocation:
    """A baseline with given shares (docs/MODEL.md section 5): only eta is optimized, if not given.

    `shares_hz` is (K,) or (D, K) for D random draws, in which case the
    delay is the mean over draws and one eta minimizes that mean.
    """
    _check_solvable(inputs)
    draws = np.atleast_2d(np.asarray(shares_hz, dtype=float))
    if draws.shape[1] != inputs.num_clients:
        raise ConfigError(
            "shares_hz", draws.shape[1], f"must have one entry per client ({inputs.num_clients})"
        )
    bad = np.argwhere(~(np.isfinite(draws) & (draws > 0)))
    if bad.size:
        d, i = (int(x) for x in bad[0])
        raise AllocationError(
            f"client {i} gets bandwidth share {draws[d, i]!r} Hz: it never finishes a round",
            status="infeasible",
        )
    if np.any(draws.sum(axis=1) > inputs.bandwidth_hz * (1 + 1e-9)):
        raise AllocationError("shares exceed the total bandwidth", status="infeasible")
    rates = rate_bps(draws, inputs.snr_hz)

    def per_client(n: float) -> np.ndarray:
        fixed, need = round_terms(inputs, n)
        return fixed + need / rates  # (D, K)

    def round_time(n: float) -> float:
        return float(np.mean(np.max(per_client(n), axis=1)))

    if eta is None:
        eta = search_eta(
            lambda e: global_rounds(e, inputs.a) * round_time(local_iterations(e, inputs.v)),
            max_eta(inputs.v, min_local_iterations),
        )
    eta = check_eta(eta)
    n = local_iterations(eta, inputs.v)
    n_int = round_up(n)
    num_rounds = global_rounds(eta, inputs.a)
    t = round_time(n)
    t_int = round_time(float(n_int))
    mean_shares = draws.mean(axis=0)
    return Allocation(
        policy=policy,
        solver="none",
        backend="closed_form",
        status="optimal",
        eta=eta,
        n=n,
        n_int=n_int,
        num_rounds=num_rounds,
        total_delay_s=num_rounds * t,
        round_time_s=t,
        bandwidth_hz=mean_shares,
        rate_bps=rates.mean(axis=0),
        client_round_s=per_client(n).mean(axis=0),
        total_delay_int_s=num_rounds * t_int,
        round_time_int_s=t_int,
        bandwidth_int_hz=mean_shares,
        num_draws=draws.shape[0],
    )
