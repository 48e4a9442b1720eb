"""Baselines of docs/MODEL.md section 5 against the optimum, through solve_policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsllm.delay import policies
from fedsllm.delay.policies import (
    ABSURD_FACTOR,
    PLAN_ROUND,
    POLICY_NAMES,
    compare_policies,
    format_factor,
    judge_delay,
    policy_shares,
    read_shares_file,
    reduction,
    solve_policies,
    solve_policy,
)
from fedsllm.errors import AllocationError, ConfigError

from .conftest import random_inputs


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 3), (2, 10), (3, 50)])
def test_no_baseline_beats_the_optimum(seed: int, k: int) -> None:
    inputs = random_inputs(seed, k)
    raw = np.random.default_rng(seed).uniform(0.1, 1.0, k)
    results = solve_policies(inputs, "exact", 0.5, list(raw / raw.sum()), 10, seed)
    assert set(results) == set(POLICY_NAMES)
    best = results["optimal"].total_delay_s
    for name, alloc in results.items():
        assert alloc.total_delay_s >= best * (1 - 1e-9), name
        assert alloc.policy == name
    # Optimizing one of the two knobs lies between the two extremes.
    equal = results["equal"].total_delay_s * (1 + 1e-12)
    assert results["equal_opt_eta"].total_delay_s <= equal
    assert results["opt_fixed_eta"].total_delay_s <= equal
    assert reduction(results["optimal"], results["equal"]) >= 0.0


def test_equal_is_the_unoptimized_case() -> None:
    inputs = random_inputs(4, 6)
    alloc = solve_policy(inputs, "equal", fixed_eta=0.4)
    np.testing.assert_allclose(alloc.bandwidth_hz, inputs.bandwidth_hz / 6)
    assert alloc.eta == 0.4
    assert alloc.solver == "none"


def test_proportional_and_fixed_shares() -> None:
    inputs = random_inputs(5, 4)
    prop = solve_policy(inputs, "proportional")
    np.testing.assert_allclose(
        prop.bandwidth_hz / prop.bandwidth_hz.sum(), inputs.gain / inputs.gain.sum()
    )
    fractions = [0.1, 0.1, 0.2, 0.4]
    fixed = solve_policy(inputs, "fixed", fractions=fractions, optimize_eta_for_fixed_shares=False)
    # Used as given: the 20% of the band nobody was given stays unused.
    np.testing.assert_allclose(fixed.bandwidth_hz, np.array(fractions) * 20e6, rtol=1e-15)
    assert fixed.eta == 0.5
    whole = solve_policy(inputs, "fixed", fractions=[0.125, 0.125, 0.25, 0.5])
    assert whole.total_delay_s < solve_policy(inputs, "fixed", fractions=fractions).total_delay_s


def test_shares_file_is_read_as_given(tmp_path) -> None:
    inputs = random_inputs(5, 3)
    path = tmp_path / "shares.json"
    path.write_text("[0.4, 0.2, 0.2]")
    fractions = read_shares_file(path, 3)
    np.testing.assert_array_equal(fractions, [0.4, 0.2, 0.2])
    shares = policy_shares("fixed", inputs, fractions=fractions)
    np.testing.assert_allclose(shares, np.array([0.4, 0.2, 0.2]) * inputs.bandwidth_hz)
    for content, field in (
        ("[0.6, 0.3, 0.2]", "policy.shares_file"),
        ("[0.4, 0.2]", "policy.shares_file"),
        ('[0.4, "a", 0.2]', "policy.shares_file[1]"),
        ("{", "policy.shares_file"),
    ):
        path.write_text(content)
        with pytest.raises(ConfigError) as err:
            read_shares_file(path, 3)
        assert err.value.path == field, content


def test_random_shares_depend_on_seed_and_round() -> None:
    inputs = random_inputs(6, 4)
    r0 = policy_shares("random", inputs, seed=3, round_index=0)
    assert r0.shape == (4,) and r0.sum() == pytest.approx(inputs.bandwidth_hz)
    np.testing.assert_array_equal(r0, policy_shares("random", inputs, seed=3, round_index=0))
    assert not np.allclose(r0, policy_shares("random", inputs, seed=3, round_index=1))
    assert not np.allclose(r0, policy_shares("random", inputs, seed=4, round_index=0))
    plan = policy_shares("random", inputs, seed=3, round_index=PLAN_ROUND, num_draws=5)
    assert plan.shape == (5, 4)
    one_round = solve_policy(inputs, "random", num_random_draws=1, seed=3, round_index=0)
    np.testing.assert_array_equal(one_round.bandwidth_hz, r0)


def test_proportional_refuses_a_zero_gain() -> None:
    inputs = random_inputs(5, 3)
    gains = inputs.gain.copy()
    gains[2] = 0.0
    with pytest.raises(AllocationError, match="client 2"):
        policy_shares("proportional", inputs.replace(gain=gains))


def test_random_is_seeded_and_averaged() -> None:
    inputs = random_inputs(6, 5)
    a = solve_policy(inputs, "random", num_random_draws=7, seed=3)
    b = solve_policy(inputs, "random", num_random_draws=7, seed=3)
    c = solve_policy(inputs, "random", num_random_draws=7, seed=4)
    assert a.total_delay_s == b.total_delay_s
    assert a.total_delay_s != c.total_delay_s
    assert a.num_draws == 7
    assert a.bandwidth_hz.sum() == pytest.approx(inputs.bandwidth_hz)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"policy_name": "fixed_steps"}, "policy.name"),
        ({"policy_name": "fixed"}, "policy.shares_file"),
        ({"policy_name": "fixed", "fractions": [0.1, 0.2]}, "policy.shares_file"),
        ({"policy_name": "fixed", "fractions": [0.4, 0.4, 0.4]}, "policy.shares_file"),
        ({"policy_name": "fixed", "fractions": [0.1, -0.1, 0.1]}, "policy.shares_file[1]"),
        ({"policy_name": "random", "num_random_draws": 0}, "policy.num_random_draws"),
    ],
)
def test_bad_policy_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        solve_policy(random_inputs(7, 3), **kwargs)
    assert err.value.path == field


@pytest.mark.parametrize(
    "delay_s,status",
    [
        (100.0, "ok"),
        (1000.0, "ok"),  # exactly ABSURD_FACTOR times the optimum is still compared
        (1000.001, "absurd"),
        (2.7e6, "absurd"),
        (math.inf, "infeasible"),
        (math.nan, "infeasible"),
    ],
)
def test_one_criterion_for_absurd(delay_s: float, status: str) -> None:
    assert ABSURD_FACTOR == 10.0
    assert judge_delay(delay_s, 100.0) == status


def test_proportional_starves_the_weakest_client_and_is_flagged() -> None:
    """The explosion of issue 8: b_k ~ g_k gives the weakest channel ~1e-6 of B (gains
    spread over 60 dB), its rate collapses and its round sets T. The policy is what
    docs/MODEL.md defines, so it is kept and flagged, not printed as -1012232%."""
    inputs = random_inputs(3, 50)
    results = compare_policies(inputs, num_random_draws=5, seed=1)
    assert set(results) == set(POLICY_NAMES) - {"fixed"}
    prop = results["proportional"]
    assert prop.status == "absurd" and prop.delay_ratio > ABSURD_FACTOR
    assert prop.label == f"absurd ({format_factor(prop.delay_ratio)} the optimum)"
    assert prop.optimal_less_delay is None
    weakest = int(np.argmin(inputs.gain))
    assert f"client {weakest} " in prop.reason
    assert prop.allocation is not None
    assert prop.allocation.bandwidth_hz[weakest] < 1e-4 * inputs.bandwidth_hz
    best = results["optimal"]
    assert best.status == "ok" and best.delay_ratio == 1.0 and best.optimal_less_delay == 0.0
    for name in ("equal", "equal_opt_eta", "opt_fixed_eta"):
        res = results[name]
        assert res.status == "ok" and res.label == "", name
        t = res.allocation.total_delay_s
        assert res.optimal_less_delay == pytest.approx(1 - best.allocation.total_delay_s / t)
        assert 0.0 <= res.optimal_less_delay < 1.0


def test_an_infeasible_baseline_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_shares(name: str, *args: object, **kwargs: object) -> np.ndarray:
        raise AllocationError(f"{name}: a client gets no band", status="infeasible")

    monkeypatch.setattr(policies, "policy_shares", no_shares)
    results = compare_policies(random_inputs(2, 4), names=("optimal", "proportional"))
    prop = results["proportional"]
    assert prop.status == "infeasible" and prop.allocation is None
    assert prop.label == "infeasible" and math.isinf(prop.delay_ratio)
    assert "no band" in prop.reason
    assert results["optimal"].status == "ok"
