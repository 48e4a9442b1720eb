"""Sweeps: one row per value, seeds averaged, reduction against equal."""

from __future__ import annotations

import math

import pytest

from fedsllm.config import load_dict
from fedsllm.delay.policies import ABSURD_FACTOR
from fedsllm.delay.sweeps import SweepPoint, average_reduction, sweep
from fedsllm.errors import ConfigError


def test_bandwidth_sweep_rows() -> None:
    base = load_dict(None)
    base["clients"] = {"num_clients": 4}
    values = [5, 10, 20, 40]
    points = sweep(
        base, "bandwidth_mhz", values, num_seeds=2, policies=("optimal", "equal", "equal_opt_eta")
    )
    assert [p.value for p in points] == [float(v) for v in values]
    for p in points:
        assert p.num_seeds == 2 and len(p.per_seed_reduction) == 2
        # The optimum beats every baseline, and by a real but partial margin.
        assert p.mean_delay_s["optimal"] <= p.mean_delay_s["equal_opt_eta"] * (1 + 1e-9)
        assert p.mean_delay_s["equal_opt_eta"] <= p.mean_delay_s["equal"] * (1 + 1e-9)
        assert 0.0 < p.reduction < 1.0
        assert all(0.0 < r < 1.0 for r in p.per_seed_reduction)
    # More bandwidth never raises the optimal delay.
    optimal = [p.mean_delay_s["optimal"] for p in points]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(optimal, optimal[1:], strict=False))
    assert optimal[-1] < optimal[0]
    assert min(p.reduction for p in points) <= average_reduction(points)
    assert average_reduction(points) <= max(p.reduction for p in points)


def test_more_clients_share_the_band() -> None:
    """A sweep over K builds each point's own scenario: more clients, more delay per round."""
    base = load_dict(None)
    points = sweep(base, "num_clients", [2, 8], num_seeds=1, policies=("optimal", "equal"))
    assert points[1].mean_delay_s["equal"] > points[0].mean_delay_s["equal"]


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
    assert err.value.path == "--values"
    assert err.value.reason == "bandwidth_mhz -1 gives channel.bandwidth_hz: must be > 0"


def test_sweep_flags_absurd_baselines() -> None:
    """Proportional at K = 10 is thousands of times the optimum (issue 8): the point says
    so, with the factor, while the paper's baselines stay ok."""
    base = load_dict(None)
    (point,) = sweep(
        base, "num_clients", [10], num_seeds=1, policies=("optimal", "equal", "proportional")
    )
    ratio = point.delay_ratio["proportional"]
    assert point.status == {"optimal": "ok", "equal": "ok", "proportional": "absurd"}
    assert ratio == pytest.approx(
        point.mean_delay_s["proportional"] / point.mean_delay_s["optimal"]
    )
    assert ratio > ABSURD_FACTOR
    assert point.label("proportional").startswith("absurd (x")
    assert point.label("equal") == ""


def _point(reduction: float, equal_status: str) -> SweepPoint:
    return SweepPoint(
        param="num_clients",
        value=1.0,
        num_seeds=1,
        mean_delay_s={"optimal": 1.0, "equal": 1.0 / (1.0 - reduction)},
        mean_eta={"optimal": 0.5, "equal": 0.5},
        reduction=reduction,
        status={"optimal": "ok", "equal": equal_status},
        delay_ratio={"optimal": 1.0, "equal": 1.0 / (1.0 - reduction)},
    )


def test_average_leaves_out_points_where_equal_is_flagged() -> None:
    points = [_point(0.3, "ok"), _point(0.5, "ok"), _point(0.99, "absurd")]
    assert average_reduction(points) == pytest.approx(0.4)
    assert math.isnan(average_reduction([_point(0.99, "absurd")]))


def test_a_fractional_number_of_clients_is_refused_not_rounded() -> None:
    """2.5 clients used to be swept as 2 under the label 2.5."""
    with pytest.raises(ConfigError, match=r"--values.*whole numbers.*2\.5"):
        sweep(load_dict(None), "num_clients", [2.5, 3], num_seeds=1)
