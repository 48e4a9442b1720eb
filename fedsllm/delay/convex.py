"""The cvxpy form of docs/MODEL.md section 5's inner problem, scaled per client,
polished and certified.

For fixed n the inner problem is: minimize over b >= 0 with sum_k b_k <= B
the round time max_k fixed_k + C_k / R_k(b_k). `ConvexInner` solves it with
cvxpy (Clarabel, SCS as the last fallback) and hands back an answer only
with a certificate of optimality that any reader can re-check with the rate
formula alone (see `certify`). fedsllm.delay.solvers.CvxpyInner wraps it
for the eta search; this module knows nothing of n, eta or DelayInputs.

Why the formulation looks the way it does (measured on the tests' random
scenarios, 50-500 m cell, 8 dB shadowing, K = 50..1000):

- The SNR s_k / b_k at the optimum spans about 1e-3 to 1e8 across clients.
  With the textbook cone -rel_entr(b, b + s) in common units Clarabel's
  dual objective starts near -1e8 and it ends `optimal_inaccurate` or fails
  on most instances at K >= 50. Here every client has its own scale beta_k
  (its share at the equal-share round time), its rate is measured against
  the rate at that scale, and the exponential cone is divided by 1 + s/beta
  so that every cone entry is O(1) at u = 1:
      (L_k (rho_k - u_k), u_k, (u_k + sig_k) / (1 + sig_k)) in K_exp
  <=>  rho_k <= R_k(beta_k u_k) / R_k(beta_k),
  with sig_k = s_k / beta_k and L_k = ln(1 + sig_k).
- Even so, min t over all clients at once (`stage 1`) leaves the shares of
  clients with a small dual (a strong client beside one near its rate
  ceiling that holds most of the band) loose: the interior point keeps
  slack_k ~ mu / lambda_k, so their shares come back up to 100x off while t
  is right to ~1e-7. So stage 1 only supplies t; the shares come from
  `stage 2`, the separable problem min sum_k u_k s.t. rho_k >= q_k(t) (each
  client's least share that finishes by t), which is well conditioned
  client by client.
- A client far below its rate ceiling's SNR (b_k >> s_k) has a share that
  is determined to first order by the budget, not by its rate, and the cone
  resolves its rate deficit only to ~1e-4. The polish (one Newton step per
  client on its finish time, one on the common time t with the exact
  derivative of sum_k b_k(t)) fixes that, and the band is then filled
  exactly.

The certificate: if sum_k b_k = B and every client finishes within
[T (1 - eps), T], no allocation finishes below T (1 - eps): it would need
b'_k > b_k for every client (a round time falls strictly as the share
grows), so more than B. Hence T <= t* / (1 - eps), and every b_k and the
optimal b*_k both lie between the least shares for T and for T (1 - eps).
Answers are accepted only when that holds with eps = CERT_RTOL, whatever the
solver's status said; otherwise the next attempt runs, and AllocationError
names every status when none passes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsllm.delay.rates import LN2, bandwidth_for_rate, rate_bps, rate_slope
from fedsllm.errors import AllocationError, ConfigError

CERT_RTOL = 1e-9
"""An answer is certified when every client finishes within this (relative) of the slowest."""
NEWTON_ROUNDS = 4
"""Stage-2 solves per attempt, each followed by the polish, before the attempt gives up."""
POLISH_SWEEPS = 3
"""Newton sweeps of the polish on one stage-2 answer (quadratic: 1e-6 -> 1e-12 -> done)."""
ACCEPTED_STATUSES = ("optimal", "optimal_inaccurate")
"""Statuses whose numbers are used at all; the certificate, not the status, decides."""


@dataclass(frozen=True, slots=True)
class ConvexSolution:
    """A certified answer of the inner problem."""

    round_time_s: float
    """T = max_k round_k of the shares below (the exact formula, not the solver's t)."""
    shares_hz: np.ndarray
    """b_k, summing to B (to rounding)."""
    backend: str
    """CLARABEL or SCS: the solver of the stage-2 solve the answer came from."""
    status: str
    """That solve's status (optimal or optimal_inaccurate; certified either way)."""
    spread: float
    """1 - min_k round_k / T, at most CERT_RTOL: the certificate's eps."""
    raw_shares_hz: np.ndarray
    """The stage-2 shares before the polish, kept to show what the solver itself got."""
    num_solves: int
    """cvxpy solves (stage 1 + stage 2) this answer took."""


def _round_times(fixed: np.ndarray, need: np.ndarray, b: np.ndarray, snr: np.ndarray) -> np.ndarray:
    return fixed + need / rate_bps(b, snr)


def finish_spread(
    fixed: np.ndarray, need: np.ndarray, shares: np.ndarray, snr: np.ndarray
) -> float:
    """1 - min_k round_k / max_k round_k: the certificate's eps for shares that fill the band."""
    times = _round_times(fixed, need, shares, snr)
    top = float(np.max(times))
    if not math.isfinite(top):
        return math.inf
    return 1.0 - float(np.min(times)) / top


def certify(
    fixed: np.ndarray,
    need: np.ndarray,
    shares: np.ndarray,
    snr: np.ndarray,
    bandwidth_hz: float,
    rtol: float = CERT_RTOL,
) -> bool:
    """True when `shares` are optimal within `rtol` (module docstring): they fill the band
    (to 1e-12) and every client finishes within `rtol` of the slowest."""
    b = np.asarray(shares, dtype=float)
    if not (np.all(np.isfinite(b)) and np.all(b > 0)):
        return False
    total = float(b.sum())
    if abs(total - bandwidth_hz) > 1e-12 * bandwidth_hz:
        return False
    return finish_spread(fixed, need, b, snr) <= rtol


def _dtime_dshare(need: np.ndarray, b: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """d round_k / d b_k = -C_k R'_k / R_k^2 (negative)."""
    r = rate_bps(b, snr)
    return -need * rate_slope(b, snr) / r**2


class ConvexInner:
    """min_b max_k fixed_k + C_k / R_k(b_k) s.t. sum b <= B, in DPP form, compiled once.

    Both stages are cvxpy Problems with Parameters, so re-solving for a new
    (fixed, need), or for a new channel after `set_channel`, costs one
    parameter update and one solver call (cvxpy caches the compiled
    problem, which depends on the number of clients alone). `attempts` is
    the fallback order: Clarabel as measured on the development machine (max_step_fraction
    0.9), Clarabel with its defaults, Clarabel with a shorter step and
    tighter tolerances, then SCS with tight eps.
    """

    def __init__(self, snr_hz: np.ndarray, bandwidth_hz: float) -> None:
        import cvxpy as cp

        k = np.asarray(snr_hz).size
        self._cp = cp
        self._num = k
        self.set_channel(snr_hz, bandwidth_hz)
        # Per-client scale parameters (set per solve).
        self._log_theta = cp.Parameter(k, pos=True)  # L_k = ln(1 + sig_k)
        self._inv_theta = cp.Parameter(k, pos=True)  # 1 / (1 + sig_k)
        self._sig_theta = cp.Parameter(k, nonneg=True)  # sig_k / (1 + sig_k)
        # Stage 1: min tau s.t. fixed/t_ref + c / rho <= tau, (beta / B) . u <= 1.
        self._u1 = cp.Variable(k, nonneg=True)
        self._rho1 = cp.Variable(k)
        self._tau = cp.Variable()
        self._fixed = cp.Parameter(k)
        self._coef = cp.Parameter(k, nonneg=True)
        self._weight = cp.Parameter(k, nonneg=True)
        self._stage1 = cp.Problem(
            cp.Minimize(self._tau),
            [
                self._cone(self._u1, self._rho1),
                self._fixed + cp.multiply(self._coef, cp.inv_pos(self._rho1)) <= self._tau,
                self._weight @ self._u1 <= 1,
            ],
        )
        # Stage 2: each client's least share finishing by t: min sum u s.t. rho >= q.
        self._u2 = cp.Variable(k, nonneg=True)
        self._rho2 = cp.Variable(k)
        self._need_rate = cp.Parameter(k, nonneg=True)
        self._stage2 = cp.Problem(
            cp.Minimize(cp.sum(self._u2)),
            [self._cone(self._u2, self._rho2), self._rho2 >= self._need_rate],
        )
        if not (self._stage1.is_dpp() and self._stage2.is_dpp()):  # pragma: no cover
            raise AllocationError("cvxpy inner problem is not DPP", status="not_dpp")

    def set_channel(self, snr_hz: np.ndarray, bandwidth_hz: float) -> None:
        """Solve for this channel (g_k p_k / N0 per client, same K) and band from now on.

        Raises AllocationError for a client no bandwidth lets finish, ConfigError
        for a different number of clients (the compiled problem is for K).
        """
        snr = np.asarray(snr_hz, dtype=float).reshape(-1)
        if snr.size != self._num:
            raise ConfigError("snr_hz", snr.size, f"must have one entry per client ({self._num})")
        bad = np.flatnonzero(~(np.isfinite(snr) & (snr > 0)))
        if bad.size:
            i = int(bad[0])
            raise AllocationError(
                f"client {i} has snr {snr[i]!r} Hz: no bandwidth lets it finish a round",
                status="infeasible",
            )
        self._snr = snr
        self._total = float(bandwidth_hz)

    def _cone(self, u: Any, rho: Any) -> Any:
        cp = self._cp
        return cp.constraints.ExpCone(
            cp.multiply(self._log_theta, rho - u),
            u,
            cp.multiply(self._inv_theta, u) + self._sig_theta,
        )

    def attempts(self) -> list[tuple[str, dict[str, Any]]]:
        """(solver, options) in fallback order; every Clarabel entry names all the settings
        it touches, because cvxpy re-uses the cached solver and keeps the last settings."""
        cp = self._cp
        clarabel = {
            "max_step_fraction": 0.99,
            "max_iter": 200,
            "tol_gap_abs": 1e-8,
            "tol_gap_rel": 1e-8,
            "tol_feas": 1e-8,
        }
        tight = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
        return [
            (cp.CLARABEL, {**clarabel, "max_step_fraction": 0.9}),
            (cp.CLARABEL, clarabel),
            (cp.CLARABEL, {**clarabel, **tight, "max_step_fraction": 0.7, "max_iter": 500}),
            (cp.SCS, {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 20_000}),
        ]

    def _run(self, problem: Any, solver: str, opts: dict[str, Any]) -> str:
        try:
            with warnings.catch_warnings():
                # cvxpy warns on inaccurate solutions; the certificate decides.
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, **opts)
        except self._cp.error.SolverError:
            return "solver_error"
        return str(problem.status)

    def solve(self, fixed: np.ndarray, need: np.ndarray) -> ConvexSolution:
        """Certified (T, shares) for round_k = fixed_k + need_k / R_k(b_k).

        Raises AllocationError naming every attempt's status when none certifies.
        """
        fixed = np.asarray(fixed, dtype=float)
        need = np.asarray(need, dtype=float)
        snr, total, k = self._snr, self._total, self._num
        # Bracket of the optimal round time: every client at its rate ceiling / equal shares.
        lo = float(np.max(fixed + need * LN2 / snr))
        hi = float(np.max(_round_times(fixed, need, np.full(k, total / k), snr)))
        t_ref = hi
        beta = bandwidth_for_rate(need / (t_ref - fixed), snr)
        beta = np.clip(np.where(np.isfinite(beta), beta, total), 1e-12 * total, total)
        sig = snr / beta
        log_theta = np.log1p(sig)
        rate_ref = beta * log_theta / LN2  # R_k(beta_k), bit/s
        self._log_theta.value = log_theta
        self._inv_theta.value = 1.0 / (1.0 + sig)
        self._sig_theta.value = sig / (1.0 + sig)
        self._fixed.value = fixed / t_ref
        self._coef.value = need / (rate_ref * t_ref)
        self._weight.value = beta / total
        ceiling = sig / log_theta  # rho as u -> infinity
        tried: list[str] = []
        solves = 0
        for solver, opts in self.attempts():
            status1 = self._run(self._stage1, solver, opts)
            solves += 1
            t = math.nan
            if status1 in ACCEPTED_STATUSES and self._tau.value is not None:
                t = float(self._tau.value) * t_ref
            tried.append(f"{solver} stage 1: {status1}")
            bracket = [lo, hi]
            if not bracket[0] < t < bracket[1]:
                t = 0.5 * (bracket[0] + bracket[1])
            for _ in range(NEWTON_ROUNDS):
                q = need / (rate_ref * (t - fixed))
                if np.any(~np.isfinite(q) | (q >= ceiling)):
                    # Some client cannot finish by t at any share: t is below t*.
                    bracket[0] = t
                    t = 0.5 * (bracket[0] + bracket[1])
                    continue
                self._need_rate.value = q
                status2 = self._run(self._stage2, solver, opts)
                solves += 1
                if status2 not in ACCEPTED_STATUSES or self._u2.value is None:
                    tried.append(f"{solver} stage 2: {status2}")
                    break
                raw = np.asarray(self._u2.value, dtype=float) * beta
                shares, t_next, excess = self._polish(fixed, need, raw, t)
                if excess > 0:
                    bracket[0] = max(bracket[0], t)
                elif excess <= 0:  # not NaN
                    bracket[1] = min(bracket[1], t)
                if shares is not None and certify(fixed, need, shares, snr, total):
                    times = _round_times(fixed, need, shares, snr)
                    return ConvexSolution(
                        round_time_s=float(np.max(times)),
                        shares_hz=shares,
                        backend=str(solver),
                        status=status2,
                        spread=finish_spread(fixed, need, shares, snr),
                        raw_shares_hz=raw,
                        num_solves=solves,
                    )
                spread = math.inf if shares is None else finish_spread(fixed, need, shares, snr)
                tried.append(
                    f"{solver} stage 2: {status2} (finish-time spread {spread:.2g} > {CERT_RTOL:g})"
                )
                t = t_next if bracket[0] < t_next < bracket[1] else 0.5 * (bracket[0] + bracket[1])
        raise AllocationError(
            "cvxpy found no certified optimal solution; attempts: " + "; ".join(tried),
            status=tried[-1].split(" (")[0] if tried else "not_solved",
        )

    def _polish(
        self, fixed: np.ndarray, need: np.ndarray, raw: np.ndarray, t: float
    ) -> tuple[np.ndarray | None, float, float]:
        """Stage-2 shares -> (shares filling the band, next t, sum_k b_k(t) - B of the raw shares).

        Each sweep is one Newton step per client on round_k(b_k) = t, then one
        on the common t for sum_k b_k(t) = B, moving each share along its own
        d b_k / d t; the shares are then rescaled to sum exactly to B. Up to
        POLISH_SWEEPS sweeps, stopping at the first that certifies. Returns
        None for the shares when a step leaves the positive orthant.
        """
        snr, total = self._snr, self._total
        b = np.maximum(raw, 1e-12 * total)
        first_excess = math.nan
        shares: np.ndarray | None = None
        for _ in range(POLISH_SWEEPS):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                step = (_round_times(fixed, need, b, snr) - t) / _dtime_dshare(need, b, snr)
                b = np.where(np.isfinite(step) & (b - step > 0), b - step, b)
                excess = float(b.sum()) - total
                slope = 1.0 / _dtime_dshare(need, b, snr)  # d b_k / d t < 0
                dt = excess / -float(slope.sum())
                moved = b + slope * dt
            if math.isnan(first_excess):
                first_excess = excess
            t = t + dt
            if not (math.isfinite(t) and np.all(np.isfinite(moved)) and np.all(moved > 0)):
                return None, t, first_excess
            b = moved * (total / float(moved.sum()))
            shares = b
            if certify(fixed, need, b, snr, total):
                break
        return shares, t, first_excess
