"""Sweeps: one row per value, seeds averaged, reduction against equal."""

from __future__ import annotations

import pytest

from fedsllm.config import load_dict
from fedsllm.delay.sweeps import average_reduction, sweep
from fedsllm.errors import ConfigError


def test_bandwidth_sweep_rows() -> None:
    base = load_dict(None)
    base["clients"] = {"num_clients": 4}
    points = sweep(
        base, "bandwidth_mhz", [5, 20], num_seeds=2, policies=("optimal", "equal", "equal_opt_eta")
    )
    assert [p.value for p in points] == [5.0, 20.0]
    for p in points:
        assert p.num_seeds == 2 and len(p.per_seed_reduction) == 2
        assert p.mean_delay_s["optimal"] <= p.mean_delay_s["equal_opt_eta"] * (1 + 1e-9)
        assert p.reduction == pytest.approx(1 - p.mean_delay_s["optimal"] / p.mean_delay_s["equal"])
    # More bandwidth, less delay.
    assert points[1].mean_delay_s["optimal"] < points[0].mean_delay_s["optimal"]
    assert average_reduction(points) == pytest.approx(
        (points[0].reduction + points[1].reduction) / 2
    )


def test_smashed_scale_raises_delay() -> None:
    base = load_dict(None)
    pts = sweep(base, "smashed_scale", [0.5, 2.0], num_seeds=1, policies=("optimal", "equal"))
    assert pts[1].mean_delay_s["equal"] > pts[0].mean_delay_s["equal"]


def test_bad_sweep_arguments() -> None:
    with pytest.raises(ConfigError) as err:
        sweep(load_dict(None), "learning_rate", [1.0])
    assert err.value.path == "--param"
    with pytest.raises(ConfigError) as err:
        sweep(load_dict(None), "bandwidth_mhz", [-1.0], num_seeds=1)
    assert err.value.path == "channel.bandwidth_hz"
