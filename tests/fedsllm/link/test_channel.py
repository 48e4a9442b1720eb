"""Channel model: seeded placement, path loss, shadowing, fading and profile overrides."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsllm.config import load_scenario
from fedsllm.link.channel import (
    client_distances,
    client_gains,
    client_powers_w,
    dbm_to_w,
    noise_psd_w_per_hz,
    path_loss_db,
)


def _scen(*overrides: str):
    return load_scenario(None, ["clients.num_clients=50", *overrides])


def test_unit_conversions() -> None:
    assert dbm_to_w(30.0) == pytest.approx(1.0)
    assert dbm_to_w(10.0) == pytest.approx(0.01)
    assert noise_psd_w_per_hz(_scen()) == pytest.approx(10 ** (-20.4))
    assert path_loss_db(np.array([1000.0]))[0] == pytest.approx(128.1)
    assert path_loss_db(np.array([100.0]))[0] == pytest.approx(128.1 - 37.6)


@pytest.mark.parametrize("placement", ["disc", "square"])
def test_placement_within_cell(placement: str) -> None:
    scen = _scen(
        f'channel.placement="{placement}"', "channel.cell_radius_m=300", "channel.min_distance_m=20"
    )
    dist = client_distances(scen)
    assert dist.shape == (50,)
    assert dist.min() >= 20.0
    limit = 300.0 if placement == "disc" else 300.0 * math.sqrt(2)
    assert dist.max() <= limit
    assert len(np.unique(dist)) == 50


def test_gains_deterministic_per_seed_and_round() -> None:
    scen = _scen('channel.fading="rayleigh"')
    g0 = client_gains(scen, 0)
    np.testing.assert_array_equal(g0, client_gains(scen, 0))
    assert not np.allclose(g0, client_gains(scen, 1), atol=0)
    assert not np.allclose(
        g0, client_gains(_scen('channel.fading="rayleigh"', "seed=1"), 0), atol=0
    )
    # Without fading the round does not matter.
    plain = _scen()
    np.testing.assert_array_equal(client_gains(plain, 0), client_gains(plain, 7))


def test_gain_is_path_loss_without_shadowing() -> None:
    scen = _scen("channel.shadowing_std_db=0.0")
    expected = 10 ** (-path_loss_db(client_distances(scen)) / 10)
    np.testing.assert_allclose(client_gains(scen), expected, rtol=1e-12)


def test_shadowing_spread_matches_sigma() -> None:
    scen = load_scenario(None, ["clients.num_clients=2000", "data.num_train_samples=2000"])
    resid = -10 * np.log10(client_gains(scen)) - path_loss_db(client_distances(scen))
    assert abs(resid.std() - 8.0) < 0.5
    assert abs(resid.mean()) < 0.5


def test_rayleigh_fading_has_unit_mean() -> None:
    scen = load_scenario(
        None,
        ["clients.num_clients=2000", "data.num_train_samples=2000", 'channel.fading="rayleigh"'],
    )
    base = client_gains(
        load_scenario(None, ["clients.num_clients=2000", "data.num_train_samples=2000"])
    )
    ratio = client_gains(scen, 3) / base
    assert abs(ratio.mean() - 1.0) < 0.1


def test_profile_overrides() -> None:
    scen = load_scenario(
        None,
        [
            "clients.num_clients=3",
            "clients.profiles=[{gain_db=-100.0}, {distance_m=250.0, tx_power_dbm=20.0}, {}]",
            "channel.shadowing_std_db=0.0",
        ],
    )
    gains = client_gains(scen)
    assert gains[0] == pytest.approx(1e-10, rel=1e-9, abs=0)
    assert gains[1] == pytest.approx(
        10 ** (-path_loss_db(np.array([250.0]))[0] / 10), rel=1e-9, abs=0
    )
    np.testing.assert_allclose(client_powers_w(scen), [0.01, 0.1, 0.01])
    # An override leaves the other clients' draws alone.
    free = load_scenario(None, ["clients.num_clients=3", "channel.shadowing_std_db=0.0"])
    assert client_distances(scen)[2] == client_distances(free)[2]
