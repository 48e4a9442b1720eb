"""Overrides that the scenario's policy would ignore are refused at load, naming the
field that does apply; the same values written in the scenario file are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsllm.config import (
    POLICIES,
    check_overrides_apply,
    check_parameters_read,
    load_scenario,
    policy_name_of,
)
from fedsllm.errors import ConfigError

FIXED = "policy.name='fixed_steps'"


@pytest.mark.parametrize(
    ("overrides", "path", "names"),
    [
        # The default scenario plans (policy optimal).
        (["training.num_rounds=3"], "training.num_rounds", "policy.max_rounds=3"),
        (["training.num_local_steps=4"], "training.num_local_steps", "policy.name='fixed_steps'"),
        (["training={num_rounds=3}"], "training.num_rounds", "policy.max_rounds=3"),
        (["policy.name='equal'", "training.num_rounds=3"], "training.num_rounds", "equal"),
        ([FIXED, "policy.max_rounds=2"], "policy.max_rounds", "training.num_rounds=2"),
    ],
)
def test_ignored_override_is_refused(overrides: list[str], path: str, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(None, overrides)
    assert err.value.path == path
    assert names in err.value.reason


@pytest.mark.parametrize(
    ("overrides", "rounds", "max_rounds"),
    [
        ([], 3, 0),  # the file's training.num_rounds=3 under policy optimal: not an override
        (["policy.max_rounds=2"], 3, 2),
        ([FIXED, "training.num_rounds=5", "training.num_local_steps=2"], 5, 0),
        (["training.num_rounds=5", FIXED], 5, 0),  # the policy is the resolved one
    ],
)
def test_applicable_override_is_kept(overrides: list[str], rounds: int, max_rounds: int) -> None:
    scenario = load_scenario(None, overrides)
    assert (scenario.training.num_rounds, scenario.policy.max_rounds) == (rounds, max_rounds)


def test_file_values_are_not_overrides(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[training]\nnum_rounds = 7\nnum_local_steps = 2\n[policy]\nname = "equal"\n')
    assert load_scenario(path).training.num_rounds == 7


def test_check_overrides_apply_is_per_policy() -> None:
    check_overrides_apply(["training.num_rounds=3"], "fixed_steps")
    check_overrides_apply(["policy.max_rounds=3", "seed=1"], "random")
    with pytest.raises(ConfigError):
        check_overrides_apply(["training.num_rounds=3"], "random")


def test_policy_name_of(tmp_path: Path) -> None:
    assert policy_name_of(None, []) == "optimal"  # the default scenario's
    assert policy_name_of(None, [FIXED]) == "fixed_steps"
    bare = tmp_path / "bare.toml"
    bare.write_text('name = "bare"\n')
    assert policy_name_of(bare, []) == "fixed_steps"  # PolicyConfig's default


@pytest.mark.parametrize(
    ("overrides", "path", "readers"),
    [
        (['policy.shares_file="/nonexistent.json"'], "policy.shares_file", "fixed"),
        (["policy.fixed_eta=0.3"], "policy.fixed_eta", "equal and opt_fixed_eta"),
        (["policy.num_random_draws=5"], "policy.num_random_draws", "random"),
        (['policy.name="fixed_steps"', 'policy.solver="cvxpy"'], "policy.solver", "opt_fixed_eta"),
        (["policy={fixed_eta=0.3}"], "policy.fixed_eta", "equal and opt_fixed_eta"),
    ],
)
def test_a_parameter_no_policy_reads_is_refused(
    overrides: list[str], path: str, readers: str
) -> None:
    # The default scenario's policy is optimal (fixed_steps where overridden): it
    # would drop these in silence and run as if they were never given.
    with pytest.raises(ConfigError) as err:
        load_scenario(None, overrides)
    assert err.value.path == path
    assert f"is read only by policy {readers}" in str(err.value)


def test_a_parameter_is_kept_where_an_evaluated_policy_reads_it() -> None:
    # fedsllm plan evaluates every policy: its equal baseline reads fixed_eta.
    assert load_scenario(None, ["policy.fixed_eta=0.3"], evaluated=POLICIES).policy.fixed_eta == 0.3
    scenario = load_scenario(None, ['policy.name="equal"', "policy.fixed_eta=0.3"])
    assert scenario.policy.fixed_eta == 0.3
    check_parameters_read(["policy.num_random_draws=3"], ["optimal", "random"])


def test_eval_every_must_be_positive() -> None:
    for value in (0, -1):
        with pytest.raises(ConfigError) as err:
            load_scenario(None, [f"training.eval_every={value}"])
        assert err.value.path == "training.eval_every"
