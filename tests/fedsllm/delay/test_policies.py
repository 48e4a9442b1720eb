"""Baselines of docs/MODEL.md section 5 against the optimum, through solve_policy."""

from __future__ import annotations

import numpy as np
import pytest

from fedsllm.delay.policies import (
    PLAN_ROUND,
    POLICY_NAMES,
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
