"""Overrides that the scenario's policy would ignore are refused at load, naming the
field that does apply; the same values written in the scenario file are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsllm.config import check_overrides_apply, load_scenario, policy_name_of
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
