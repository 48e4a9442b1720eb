"""Scenario -> the numbers of the delay model (docs/MODEL.md sections 2-4), as one frozen record.

`DelayInputs` is what every solver, baseline and prediction reads: per-client
channel, power, compute times and bit counts, plus the scalars B, N0, a, v,
beta, t_agg. `delay_inputs` builds it from a ScenarioConfig, taking FLOPs and
bytes from fedsllm.model.counts and gains from fedsllm.link.channel; solving
is left to fedsllm.delay.solvers. Everything is in SI units (Hz, bit, s, W).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsllm.errors import ConfigError

_PER_CLIENT = (
    "gain",
    "power_w",
    "client_flops",
    "data_sizes",
    "client_compute_s",
    "server_compute_s",
    "downlink_iter_s",
    "adapter_downlink_s",
    "bits_per_iter",
    "omega_bits",
)


MIN_ROUNDS_CONSTANT = 1.0
"""Least rounds constant a accepted. N(eta) = a / (1 - eta) > a for every eta in (0, 1),
so a >= 1 is exactly what keeps every policy's continuous N >= 1, whatever eta it
fixes or finds; below it the model would promise less than the one round a run does.
Checked here because plan, sweep and the allocation controller all build DelayInputs."""


def _check(ok: bool, path: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(path, value, reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class DelayInputs:
    """Inputs of docs/MODEL.md sections 2-5 for K clients (arrays of shape (K,), read-only).

    Per iteration of client k (section 3):
    tau_k = client_compute_s + server_compute_s + downlink_iter_s, the part
    that does not depend on the bandwidth share; bits_per_iter = beta*s goes
    up the shared link every iteration, omega_bits once a round.
    """

    gain: np.ndarray
    """Channel power gain g_k (linear)."""
    power_w: np.ndarray
    """Transmit power p_k, W."""
    client_flops: np.ndarray
    """Compute speed f_k, FLOP/s."""
    data_sizes: np.ndarray
    """Training samples D_k (FedAvg weights; not a delay term)."""
    client_compute_s: np.ndarray
    """beta * phi_c / f_k: client forward+backward per iteration, s."""
    server_compute_s: np.ndarray
    """beta * phi_s / f_S: main-server work per iteration for this client, s."""
    downlink_iter_s: np.ndarray
    """beta * gradient bits / R_dl: activation gradients back per iteration, s (0 = unlimited)."""
    adapter_downlink_s: np.ndarray
    """omega / R_dl: global adapter back once a round, s (0 = unlimited)."""
    bits_per_iter: np.ndarray
    """beta * s: uplink bits per iteration (activations + labels + mask)."""
    omega_bits: np.ndarray
    """Client-side LoRA state uploaded once a round, bits."""
    bandwidth_hz: float
    """Total uplink bandwidth B."""
    noise_psd_w_per_hz: float
    """N0."""
    a: float
    """Rounds constant, N(eta) = a / (1 - eta); >= MIN_ROUNDS_CONSTANT."""
    v: float
    """Local-iteration constant, n(eta) = v log2(1/eta)."""
    batch_size: int
    """beta."""
    aggregation_s: float = 0.0
    """t_agg per round."""
    downlink_bps: float = 0.0
    """Per-client downlink rate R_dl; 0 = unlimited (already folded into the *_s fields)."""

    def __post_init__(self) -> None:
        num = None
        for name in _PER_CLIENT:
            arr = np.array(getattr(self, name), dtype=float, copy=True).reshape(-1)
            if num is None:
                num = arr.size
            _check(
                arr.size == num,
                f"DelayInputs.{name}",
                arr.size,
                f"must have one entry per client ({num})",
            )
            bad = np.flatnonzero(~(np.isfinite(arr) & (arr >= 0)))
            if bad.size:
                i = int(bad[0])
                raise ConfigError(
                    f"DelayInputs.{name}[{i}]", float(arr[i]), "must be finite and >= 0"
                )
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        _check(bool(num), "clients.num_clients", num, "must be >= 1")
        for name in ("power_w", "client_flops", "bits_per_iter"):
            arr = getattr(self, name)
            bad = np.flatnonzero(arr <= 0)
            if bad.size:
                i = int(bad[0])
                raise ConfigError(f"DelayInputs.{name}[{i}]", float(arr[i]), "must be > 0")
        for name in ("bandwidth_hz", "noise_psd_w_per_hz", "a", "v"):
            value = float(getattr(self, name))
            _check(math.isfinite(value) and value > 0, f"DelayInputs.{name}", value, "must be > 0")
        _check(
            self.a >= MIN_ROUNDS_CONSTANT,
            "convergence.a",
            self.a,
            f"must be >= {MIN_ROUNDS_CONSTANT:g}: N(eta) = a / (1 - eta) global rounds falls "
            "below 1 for eta < 1 - a, a plan of less than one round; rerun `fedsllm calibrate` "
            "with a target loss the runs need several rounds to reach, or set convergence.a >= 1",
        )
        for name in ("aggregation_s", "downlink_bps"):
            value = float(getattr(self, name))
            _check(
                math.isfinite(value) and value >= 0, f"DelayInputs.{name}", value, "must be >= 0"
            )
        _check(self.batch_size >= 1, "DelayInputs.batch_size", self.batch_size, "must be >= 1")

    @property
    def num_clients(self) -> int:
        return int(self.gain.size)

    @property
    def tau_s(self) -> np.ndarray:
        """tau_k of docs/MODEL.md section 3: per-iteration time that no bandwidth share changes."""
        return self.client_compute_s + self.server_compute_s + self.downlink_iter_s

    @property
    def snr_hz(self) -> np.ndarray:
        """g_k p_k / N0, Hz: the rate ceiling times ln 2 (docs/MODEL.md section 2)."""
        return self.gain * self.power_w / self.noise_psd_w_per_hz

    @property
    def rate_ceiling_bps(self) -> np.ndarray:
        """lim_{b->inf} R_k(b) = g_k p_k / (N0 ln 2)."""
        return self.snr_hz / math.log(2.0)

    def replace(self, **changes: Any) -> DelayInputs:
        """A copy with some fields changed (sweeps, tests), validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field plus tau_s, from which the optimum can be
        recomputed."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        out["tau_s"] = self.tau_s.tolist()
        return out


def delay_inputs(scenario: Any, round_index: int = 0, counts: Any = None) -> DelayInputs:
    """Build the delay-model inputs of `scenario` for round `round_index`.

    `counts` (a fedsllm.model.counts.ModelCounts) defaults to counting the
    scenario's own model and split; pass one to reuse it across rounds or
    sweeps. The round index only matters with Rayleigh fading.
    """
    from fedsllm.data.partition import client_sizes
    from fedsllm.link.channel import client_gains, client_powers_w, noise_psd_w_per_hz

    if counts is None:
        from fedsllm.model.counts import count_scenario

        counts = count_scenario(scenario)
    k = scenario.clients.num_clients
    beta = scenario.training.batch_size
    flops = np.array([scenario.profile(i).flops for i in range(k)], dtype=float)
    dl_bps = scenario.channel.downlink_bps
    grad_bits = 8.0 * counts.gradient_bytes * beta
    omega = 8.0 * counts.client_adapter_bytes
    ones = np.ones(k)
    return DelayInputs(
        gain=client_gains(scenario, round_index),
        power_w=client_powers_w(scenario),
        client_flops=flops,
        data_sizes=np.array(
            client_sizes(scenario.data.num_train_samples, scenario.data.client_fractions, k),
            dtype=float,
        ),
        client_compute_s=beta * counts.phi_c / flops,
        server_compute_s=ones * (beta * counts.phi_s / scenario.devices.server_flops),
        downlink_iter_s=ones * (grad_bits / dl_bps if dl_bps > 0 else 0.0),
        adapter_downlink_s=ones * (omega / dl_bps if dl_bps > 0 else 0.0),
        bits_per_iter=ones * (8.0 * counts.smashed_bytes * beta),
        omega_bits=ones * omega,
        bandwidth_hz=scenario.channel.bandwidth_hz,
        noise_psd_w_per_hz=noise_psd_w_per_hz(scenario),
        a=scenario.convergence.a,
        v=scenario.convergence.v,
        batch_size=beta,
        aggregation_s=scenario.devices.aggregation_s,
        downlink_bps=dl_bps,
    )
