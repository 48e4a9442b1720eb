"""Random but realistic DelayInputs for the solver tests (channel-like gains, O(1) delays)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedsllm.delay.inputs import DelayInputs


def random_inputs(
    seed: int, num_clients: int, bandwidth_hz: float = 20e6, identical: bool = False
) -> DelayInputs:
    """Placement in a 50-500 m disc, 8 dB shadowing, 10 dBm, compute and bits spread 10x."""
    rng = np.random.default_rng([seed, num_clients])
    k = num_clients
    dist = np.sqrt(rng.uniform(50.0**2, 500.0**2, k))
    gain_db = -(128.1 + 37.6 * np.log10(dist / 1000.0)) + 8.0 * rng.standard_normal(k)
    if identical:
        gain_db[:] = gain_db[0]
    spread = (
        (lambda lo, hi: np.full(k, lo)) if identical else (lambda lo, hi: rng.uniform(lo, hi, k))
    )
    return DelayInputs(
        gain=10 ** (gain_db / 10),
        power_w=np.full(k, 0.01),
        client_flops=np.full(k, 2e9),
        data_sizes=np.full(k, 100.0),
        client_compute_s=spread(0.01, 0.1),
        server_compute_s=np.full(k, 0.02),
        downlink_iter_s=np.zeros(k),
        adapter_downlink_s=np.zeros(k),
        bits_per_iter=spread(2e5, 2e6),
        omega_bits=spread(1e5, 1e6),
        bandwidth_hz=bandwidth_hz,
        noise_psd_w_per_hz=10 ** (-20.4),
        a=float(rng.uniform(1.0, 10.0)),
        v=float(rng.uniform(1.0, 10.0)),
        batch_size=8,
        aggregation_s=0.01,
    )


@pytest.fixture
def make_inputs() -> Callable[..., DelayInputs]:
    return random_inputs
