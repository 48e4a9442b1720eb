"""Baselines of MODEL.md section 5 against the optimum, through solve_policy."""

from __future__ import annotations

import numpy as np
import pytest

from fedsllm.delay.policies import POLICY_NAMES, reduction, solve_policies, solve_policy
from fedsllm.errors import ConfigError

from .conftest import random_inputs


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 3), (2, 10), (3, 50)])
def test_no_baseline_beats_the_optimum(seed: int, k: int) -> None:
    inputs = random_inputs(seed, k)
    shares = list(np.random.default_rng(seed).uniform(0.1, 1.0, k))
    results = solve_policies(inputs, "exact", 0.5, shares, 10, seed)
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
    fixed = solve_policy(inputs, "fixed", shares=[1, 1, 2, 4], optimize_eta_for_fixed_shares=False)
    np.testing.assert_allclose(fixed.bandwidth_hz, np.array([1, 1, 2, 4]) / 8 * 20e6)
    assert fixed.eta == 0.5


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
        ({"policy_name": "fixed", "shares": [1.0, 2.0]}, "policy.shares_file"),
        ({"policy_name": "fixed", "shares": [1.0, -1.0, 1.0]}, "policy.shares_file[1]"),
        ({"policy_name": "random", "num_random_draws": 0}, "policy.num_random_draws"),
    ],
)
def test_bad_policy_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        solve_policy(random_inputs(7, 3), **kwargs)
    assert err.value.path == field
