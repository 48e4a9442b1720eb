"""--rounds and --local-steps: the one flag mapper knows which field each sets under the
run's policy, and the CLI refuses what that policy would ignore (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsllm.cli import build_parser, flag_overrides, main

FIXED = "policy.name='fixed_steps'"


def _args(*argv: str):
    return build_parser().parse_args(["run", *argv])


@pytest.mark.parametrize(
    ("argv", "tail"),
    [
        # The default scenario plans (policy optimal): --rounds cuts the plan.
        (["--rounds", "2"], ["policy.max_rounds=2"]),
        (["--policy", "equal", "--rounds", "2"], ["policy.name='equal'", "policy.max_rounds=2"]),
        (
            ["--policy", "fixed_steps", "--rounds", "2", "--local-steps", "3"],
            ["policy.name='fixed_steps'", "training.num_rounds=2", "training.num_local_steps=3"],
        ),
        (["--set", FIXED, "--rounds", "2"], [FIXED, "training.num_rounds=2"]),
        # --policy wins over --set, so it decides what --rounds means.
        (
            ["--set", FIXED, "--policy", "optimal", "--rounds", "2"],
            [FIXED, "policy.name='optimal'", "policy.max_rounds=2"],
        ),
        (["--clients", "2"], ["clients.num_clients=2"]),
    ],
)
def test_rounds_flags_map_by_policy(argv: list[str], tail: list[str]) -> None:
    assert flag_overrides(_args(*argv)) == tail


def test_rounds_flag_reads_the_policy_of_the_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "fixed.toml"
    path.write_text('[policy]\nname = "fixed_steps"\n')
    assert flag_overrides(_args("--scenario", str(path), "--rounds", "4")) == [
        "training.num_rounds=4"
    ]
    # A caller that knows the policy (compare) passes it.
    assert flag_overrides(_args("--scenario", str(path), "--rounds", "4"), policy="optimal") == [
        "policy.max_rounds=4"
    ]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "--local-steps", "3"], "--local-steps: policy optimal plans the local steps"),
        (["run", "--rounds", "0"], "--rounds: must be >= 1"),
        (["run", "--set", "training.num_rounds=3"], "policy.max_rounds=3"),
        (["plan", "--set", "training.num_rounds=3"], "training.num_rounds: is ignored"),
        (["plan", "--set", "training.num_local_steps=3"], "policy.name='fixed_steps'"),
        (["plan", "--set", FIXED, "--set", "policy.max_rounds=3"], "training.num_rounds=3"),
    ],
)
def test_ignored_overrides_exit_2_naming_the_field(
    argv: list[str], named: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing started


def test_help_says_what_rounds_sets() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "run" in a.choices).choices
    for name in ("run", "compare"):
        rounds = next(a for a in sub[name]._actions if "--rounds" in a.option_strings)
        assert "policy.max_rounds" in rounds.help
