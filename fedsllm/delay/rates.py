"""The delay model's formulas (docs/MODEL.md sections 2-4): rates, the lemma, round times.

Pure numpy functions over DelayInputs; no solving (fedsllm.delay.solvers)
and no I/O. `predict_round_delay` is the model's prediction for one round
with given shares and integer local iterations, which the run reports hold
against measured spans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsllm.delay.inputs import DelayInputs
from fedsllm.errors import AllocationError, ConfigError

LN2 = math.log(2.0)


def check_eta(eta: float) -> float:
    """Reject an accuracy outside the open interval (0, 1) of docs/MODEL.md section 4."""
    if not (isinstance(eta, int | float) and math.isfinite(eta) and 0.0 < eta < 1.0):
        raise ConfigError("eta", eta, "must be in the open interval (0, 1)")
    return float(eta)


def local_iterations(eta: float, v: float) -> float:
    """n(eta) = v log2(1/eta), docs/MODEL.md section 4 (continuous)."""
    return v * math.log2(1.0 / check_eta(eta))


def global_rounds(eta: float, a: float) -> float:
    """N(eta) = a / (1 - eta), docs/MODEL.md section 4."""
    return a / (1.0 - check_eta(eta))


def round_up(x: float) -> int:
    """A continuous count (local iterations n, global rounds N) rounded up as a real run
    does, at least 1.

    The 1e-9 slack keeps a value such as 6.000000000001 (from log2 rounding) at 6.
    """
    return max(1, math.ceil(x - 1e-9))


def rate_bps(shares_hz: np.ndarray, snr_hz: np.ndarray) -> np.ndarray:
    """R_k(b_k) = b_k log2(1 + g_k p_k / (N0 b_k)), docs/MODEL.md section 2; R(0) = 0."""
    b = np.asarray(shares_hz, dtype=float)
    c = np.asarray(snr_hz, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = b * np.log1p(c / b) / LN2
    return np.where(b > 0, r, 0.0)


def rate_slope(shares_hz: np.ndarray, snr_hz: np.ndarray) -> np.ndarray:
    """dR_k/db_k (bit/s per Hz), positive and decreasing: R_k is concave (section 2)."""
    b = np.asarray(shares_hz, dtype=float)
    c = np.asarray(snr_hz, dtype=float)
    return (np.log1p(c / b) - c / (b + c)) / LN2


BRANCH_GAMMA = 0.9
"""Above this Gamma the lemma is evaluated in the cancellation-free form below."""


def _lower_branch_gap(delta: np.ndarray) -> np.ndarray:
    """eps > 0 with -W_{-1}(-Gamma e^-Gamma) = 1 + eps, for Gamma = 1 - delta.

    u = -W_{-1}(.) is the root u > 1 of u - ln u = Gamma - ln Gamma; with
    u = 1 + eps and Gamma = 1 - delta that is eps - log1p(eps) = -delta -
    log1p(-delta), whose two sides are computed to full relative precision
    (log1p), unlike W_{-1} near its branch point -1/e, where Gamma -> 1 and
    W + Gamma cancels. Newton from eps = delta (the two agree to first order)
    converges in a handful of steps: the function is convex and increasing.
    """
    target = -delta - np.log1p(-delta)
    eps = delta * (1.0 + 2.0 * delta / 3.0)
    for _ in range(40):
        f = eps - np.log1p(eps) - target
        step = f * (1.0 + eps) / eps
        eps = np.maximum(eps - step, eps * 0.5)
        if np.all(np.abs(step) <= 1e-15 * eps):
            break
    return eps


def bandwidth_for_rate(rate: np.ndarray, snr_hz: np.ndarray) -> np.ndarray:
    """The lemma of docs/MODEL.md section 5: least b with R(b) = rho.

    b(rho) = -rho ln2 / (W_{-1}(-Gamma e^{-Gamma}) + Gamma), Gamma = rho ln2 / snr,
    for Gamma < 1; +inf at or above the rate ceiling; 0 for rho = 0. Near the
    ceiling (Gamma > BRANCH_GAMMA) the denominator cancels catastrophically,
    so there it is written as W + Gamma = -(eps + delta) with delta = 1 - Gamma
    and eps from `_lower_branch_gap`. One Newton step on R(b) = rho follows.
    """
    from scipy.special import lambertw

    rho = np.asarray(rate, dtype=float)
    c = np.asarray(snr_hz, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gamma = rho * LN2 / c
        ok = (gamma > 0) & (gamma < 1)
        g = np.where(ok, gamma, 0.5)
        near = ok & (g > BRANCH_GAMMA)
        w = lambertw(-g * np.exp(-g), k=-1).real
        denom = w + g
        if np.any(near):
            delta = np.where(near, 1.0 - g, 0.05)
            denom = np.where(near, -(_lower_branch_gap(delta) + delta), denom)
        b = -g * c / denom
        b = np.where(np.isfinite(b) & (b > 0), b, np.inf)
        # Newton polish on b log1p(c/b) = rho ln2 (only where b is finite).
        fin = ok & np.isfinite(b)
        bb = np.where(fin, b, 1.0)
        resid = bb * np.log1p(c / bb) - g * c
        slope = np.log1p(c / bb) - c / (bb + c)
        step = np.where(fin & (slope > 0), resid / slope, 0.0)
        polished = bb - step
        b = np.where(fin & (polished > 0), polished, b)
    return np.where(rho <= 0, 0.0, np.where(ok, b, np.inf))


@dataclass(frozen=True, slots=True)
class DelayBreakdown:
    """One round's predicted delay, per client and phase (docs/MODEL.md section 3), seconds.

    Every array has shape (K,); `client_round_s` is their sum per client and
    `round_time_s` the slowest client (the round ends when all report).
    """

    num_iterations: int
    shares_hz: np.ndarray
    rate_bps: np.ndarray
    client_compute_s: np.ndarray
    server_compute_s: np.ndarray
    uplink_s: np.ndarray
    """n * beta * s / R_k: smashed data up."""
    downlink_s: np.ndarray
    """n * beta * gradient bits / R_dl: gradients down (0 when unlimited)."""
    adapter_uplink_s: np.ndarray
    """omega / R_k."""
    adapter_downlink_s: np.ndarray
    aggregation_s: float
    client_round_s: np.ndarray
    round_time_s: float

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


def round_terms(inputs: DelayInputs, n: float) -> tuple[np.ndarray, np.ndarray]:
    """(fixed_k, C_k) with round_k = fixed_k + C_k / R_k(b_k) (docs/MODEL.md sections 3 and 5).

    fixed_k = n tau_k + omega / R_dl + t_agg is what no uplink share changes;
    C_k = n beta s + omega is the uplink bits of a round. The one place the
    round-time formula is written: the solvers and the predictions use it.
    """
    fixed = n * inputs.tau_s + inputs.adapter_downlink_s + inputs.aggregation_s
    need = n * inputs.bits_per_iter + inputs.omega_bits
    return fixed, need


def client_round_times(inputs: DelayInputs, shares_hz: np.ndarray, n: float) -> np.ndarray:
    """round_k = n (tau_k + beta s / R_k) + omega / R_k + omega / R_dl + t_agg (section 3).

    `n` may be continuous (the optimizer's n(eta)); infinite for a zero share.
    """
    fixed, need = round_terms(inputs, n)
    with np.errstate(divide="ignore"):
        return fixed + need / rate_bps(shares_hz, inputs.snr_hz)


def predict_round_delay(inputs: DelayInputs, shares_hz: np.ndarray, n_int: int) -> DelayBreakdown:
    """Predicted delay of one round with bandwidth `shares_hz` and `n_int` local iterations.

    Raises AllocationError when a share is zero or negative (that client
    never finishes) or shares exceed the total bandwidth, ConfigError on a
    wrong shape or iteration count.
    """
    shares = np.asarray(shares_hz, dtype=float).reshape(-1)
    k = inputs.num_clients
    if shares.size != k:
        raise ConfigError("shares_hz", shares.size, f"must have one entry per client ({k})")
    if not (isinstance(n_int, int | np.integer) and n_int >= 1):
        raise ConfigError("n_int", n_int, "must be an integer >= 1")
    bad = np.flatnonzero(~(np.isfinite(shares) & (shares > 0)))
    if bad.size:
        i = int(bad[0])
        raise AllocationError(
            f"client {i} has bandwidth share {shares[i]!r} Hz: it never finishes a round",
            status="infeasible",
        )
    if shares.sum() > inputs.bandwidth_hz * (1 + 1e-9):
        raise AllocationError(
            f"shares sum to {shares.sum():.6g} Hz, above the total "
            f"bandwidth {inputs.bandwidth_hz:.6g} Hz",
            status="infeasible",
        )
    if np.any(inputs.snr_hz <= 0):
        i = int(np.flatnonzero(inputs.snr_hz <= 0)[0])
        raise AllocationError(
            f"client {i} has zero channel gain: it never finishes a round", status="infeasible"
        )
    n = int(n_int)
    r = rate_bps(shares, inputs.snr_hz)
    client_compute = n * inputs.client_compute_s
    server_compute = n * inputs.server_compute_s
    uplink = n * inputs.bits_per_iter / r
    downlink = n * inputs.downlink_iter_s
    adapter_up = inputs.omega_bits / r
    fixed, need = round_terms(inputs, n)
    per_client = fixed + need / r
    return DelayBreakdown(
        num_iterations=n,
        shares_hz=shares,
        rate_bps=r,
        client_compute_s=client_compute,
        server_compute_s=server_compute,
        uplink_s=uplink,
        downlink_s=downlink,
        adapter_uplink_s=adapter_up,
        adapter_downlink_s=np.array(inputs.adapter_downlink_s),
        aggregation_s=float(inputs.aggregation_s),
        client_round_s=per_client,
        round_time_s=float(per_client.max()),
    )
