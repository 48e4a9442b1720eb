"""Channel model of docs/MODEL.md section 2: client placement, gains, powers and noise, seeded.

Turns a scenario into the physical numbers g_k, p_k and N0 that the rate
formula needs; rates and shaping are left to fedsllm.delay and the shapers.
Placement and shadowing are drawn once per scenario seed; Rayleigh fading is
re-drawn per round from (seed, round), so any process can recompute the same
gains without talking to another.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_PLACEMENT_STREAM = 1
_SHADOWING_STREAM = 2
_FADING_STREAM = 3


def dbm_to_w(dbm: float | np.ndarray) -> float | np.ndarray:
    """dBm -> watts."""
    return 10.0 ** ((np.asarray(dbm, dtype=float) - 30.0) / 10.0)


def db_to_linear(db: float | np.ndarray) -> float | np.ndarray:
    return 10.0 ** (np.asarray(db, dtype=float) / 10.0)


def path_loss_db(
    distance_m: np.ndarray, intercept_db: float = 128.1, slope_db: float = 37.6
) -> np.ndarray:
    """intercept + slope * log10(d / km): the 3GPP macro-cell law of docs/MODEL.md section 2."""
    return intercept_db + slope_db * np.log10(np.asarray(distance_m, dtype=float) / 1000.0)


def _rng(seed: int, stream: int, round_index: int = 0) -> np.random.Generator:
    # One independent stream per purpose, so adding fading does not move placement.
    return np.random.default_rng([seed, stream, round_index])


def client_distances(scenario: Any) -> np.ndarray:
    """Distance of every client to the base station, metres (profile overrides win).

    Disc: uniform over the annulus [min_distance, radius]. Square: uniform in
    the square of half-side radius, distances below min_distance raised to it.
    Every client draws its point even when overridden, so one client's
    override never moves another client.
    """
    ch = scenario.channel
    k = scenario.clients.num_clients
    rng = _rng(scenario.seed, _PLACEMENT_STREAM)
    if ch.placement == "disc":
        u = rng.random(k)
        lo2, hi2 = ch.min_distance_m**2, ch.cell_radius_m**2
        dist = np.sqrt(lo2 + u * (hi2 - lo2))
    else:
        xy = rng.uniform(-ch.cell_radius_m, ch.cell_radius_m, size=(k, 2))
        dist = np.maximum(np.hypot(xy[:, 0], xy[:, 1]), ch.min_distance_m)
    for i in range(k):
        fixed = scenario.profile(i).distance_m
        if fixed > 0:
            dist[i] = fixed
    return dist


def client_gains(scenario: Any, round_index: int = 0) -> np.ndarray:
    """Linear channel power gain g_k of every client in round `round_index`.

    g = 10^(-(path loss + shadowing)/10) x fading, with log-normal shadowing
    (std channel.shadowing_std_db) fixed per seed and Rayleigh fading
    (|h|^2 ~ Exp(1)) drawn per (seed, round) when channel.fading = rayleigh.
    A profile's gain_db replaces path loss and shadowing; fading still applies.
    Deterministic in (scenario, round_index).
    """
    ch = scenario.channel
    k = scenario.clients.num_clients
    loss_db = path_loss_db(
        client_distances(scenario), ch.path_loss_intercept_db, ch.path_loss_slope_db
    )
    shadow_db = _rng(scenario.seed, _SHADOWING_STREAM).normal(0.0, 1.0, k) * ch.shadowing_std_db
    gain_db = -(loss_db + shadow_db)
    for i in range(k):
        fixed = scenario.profile(i).gain_db
        if not math.isnan(fixed):
            gain_db[i] = fixed
    gains = db_to_linear(gain_db)
    if ch.fading == "rayleigh":
        gains = gains * _rng(scenario.seed, _FADING_STREAM, round_index).exponential(1.0, k)
    return np.asarray(gains, dtype=float)


def client_powers_w(scenario: Any) -> np.ndarray:
    """Transmit power p_k of every client, watts (profile tx_power_dbm or the channel default)."""
    k = scenario.clients.num_clients
    return np.asarray(dbm_to_w([scenario.profile(i).tx_power_dbm for i in range(k)]), dtype=float)


def noise_psd_w_per_hz(scenario: Any) -> float:
    """N0 in W/Hz from channel.noise_psd_dbm_per_hz."""
    return float(dbm_to_w(scenario.channel.noise_psd_dbm_per_hz))
