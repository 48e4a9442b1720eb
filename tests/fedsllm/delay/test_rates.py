"""Rates, the Lambert-W lemma and the per-round prediction (docs/MODEL.md sections 2-4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from fedsllm.delay.rates import (
    bandwidth_for_rate,
    client_round_times,
    global_rounds,
    local_iterations,
    predict_round_delay,
    rate_bps,
    round_up,
)
from fedsllm.errors import AllocationError, ConfigError


@settings(max_examples=200, deadline=None)
@given(snr=st.floats(1e2, 1e13), frac=st.floats(1e-6, 0.9999))
def test_lemma_equals_numerical_root(snr: float, frac: float) -> None:
    rho = frac * snr / math.log(2)  # below the rate ceiling
    b = float(bandwidth_for_rate(np.array([rho]), np.array([snr]))[0])
    root = brentq(
        lambda x: x * math.log1p(snr / x) / math.log(2) - rho,
        snr * 1e-30,
        snr * 1e12,
        xtol=1e-300,
        rtol=1e-14,
        maxiter=2000,
    )
    assert b == pytest.approx(root, rel=1e-9)
    assert float(rate_bps(np.array([b]), np.array([snr]))[0]) == pytest.approx(rho, rel=1e-12)


def test_lemma_edges() -> None:
    snr = np.array([1e6, 1e6, 1e6])
    ceiling = 1e6 / math.log(2)
    b = bandwidth_for_rate(np.array([0.0, ceiling, 2 * ceiling]), snr)
    assert b[0] == 0.0
    assert math.isinf(b[1]) and math.isinf(b[2])


def test_rate_is_increasing_concave_and_bounded() -> None:
    b = np.linspace(1e3, 1e8, 500)
    r = rate_bps(b, np.full_like(b, 5e6))
    assert np.all(np.diff(r) > 0)
    assert np.all(np.diff(r, 2) < 0)
    assert r[-1] < 5e6 / math.log(2)
    assert rate_bps(np.array([0.0]), np.array([1e6]))[0] == 0.0


def test_eta_functions() -> None:
    assert local_iterations(0.25, 3.0) == pytest.approx(6.0)
    assert global_rounds(0.75, 2.0) == pytest.approx(8.0)
    assert round_up(6.0000000000001) == 6
    assert round_up(6.2) == 7
    assert round_up(0.3) == 1
    for bad in (0.0, 1.0, -0.5, math.nan):
        with pytest.raises(ConfigError) as err:
            local_iterations(bad, 1.0)
        assert err.value.path == "eta"


def test_prediction_components_add_up(make_inputs) -> None:
    inp = make_inputs(3, 5).replace(
        downlink_iter_s=np.full(5, 0.05), adapter_downlink_s=np.full(5, 0.2)
    )
    shares = np.full(5, inp.bandwidth_hz / 5)
    pred = predict_round_delay(inp, shares, 4)
    total = (
        pred.client_compute_s
        + pred.server_compute_s
        + pred.uplink_s
        + pred.downlink_s
        + pred.adapter_uplink_s
        + pred.adapter_downlink_s
        + pred.aggregation_s
    )
    np.testing.assert_allclose(pred.client_round_s, total, rtol=1e-14)
    np.testing.assert_allclose(
        pred.client_round_s, client_round_times(inp, shares, 4.0), rtol=1e-14
    )
    np.testing.assert_allclose(pred.uplink_s, 4 * inp.bits_per_iter / pred.rate_bps)
    np.testing.assert_allclose(pred.downlink_s, 4 * 0.05)
    assert pred.round_time_s == pytest.approx(pred.client_round_s.max())
    assert set(pred.to_dict()) >= {"uplink_s", "round_time_s"}


def test_prediction_rejects_bad_shares(make_inputs) -> None:
    inp = make_inputs(3, 3)
    with pytest.raises(AllocationError):
        predict_round_delay(inp, np.array([0.0, 1e6, 1e6]), 2)
    with pytest.raises(AllocationError):
        predict_round_delay(inp, np.full(3, inp.bandwidth_hz), 2)
    with pytest.raises(ConfigError) as err:
        predict_round_delay(inp, np.full(2, 1e6), 2)
    assert err.value.path == "shares_hz"
    with pytest.raises(ConfigError) as err:
        predict_round_delay(inp, np.full(3, 1e6), 0)
    assert err.value.path == "n_int"


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.9000001, 0.99, 0.99999, 1 - 1e-8, 1 - 1e-12])
def test_lemma_is_exact_up_to_the_rate_ceiling(gamma: float) -> None:
    """R(b(rho)) = rho even where W_-1 is near its branch point (Gamma -> 1)."""
    from fedsllm.delay.rates import LN2, bandwidth_for_rate, rate_bps

    snr = np.array([357653.0, 2.5e9])
    rho = gamma * snr / LN2
    b = bandwidth_for_rate(rho, snr)
    np.testing.assert_allclose(rate_bps(b, snr), rho, rtol=1e-9)
