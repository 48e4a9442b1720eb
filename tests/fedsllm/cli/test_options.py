"""The command line is frozen on purpose (flags are sugar for --set): new knobs go into
the scenario and are reached with --set. Changing a flag means changing this table."""

from __future__ import annotations

import argparse

import pytest

from fedsllm.cli import build_parser, main

EXPECTED = {
    "run": {
        "--clients",
        "--faults",
        "--insecure",
        "--local-steps",
        "--network",
        "--out",
        "--policy",
        "--quiet",
        "--restart",
        "--resume",
        "--rounds",
        "--scenario",
        "--seed",
        "--set",
        "--skip-memory-check",
        "--tls",
    },
    "plan": {"--bandwidth-mhz", "--clients", "--json", "--scenario", "--seed", "--set", "--solver"},
    "sweep": {
        "--out",
        "--paper",
        "--param",
        "--scenario",
        "--seeds",
        "--set",
        "--solver",
        "--values",
    },
    "export": set(),
    "report": {"--format"},
    "compare": {
        "--clients",
        "--out",
        "--policies",
        "--rounds",
        "--scenario",
        "--seed",
        "--set",
        "--skip-memory-check",
    },
    "calibrate": {
        "--max-rounds",
        "--out",
        "--scenario",
        "--set",
        "--steps",
        "--target-loss",
        "--write",
    },
    "certs": {"--clients", "--host"},
    "compose": {"--clients", "--links", "--out", "--rounds", "--scenario", "--set", "--tls"},
    "watch": set(),
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_cli_options_are_pinned() -> None:
    found = {
        name: {o for a in p._actions for o in a.option_strings} - {"-h", "--help"}
        for name, p in _subcommands().items()
    }
    assert found == EXPECTED


def test_flags_are_sugar_for_overrides() -> None:
    from fedsllm.cli.run import flag_overrides

    args = _subcommands()["run"].parse_args(
        [
            "--clients",
            "4",
            "--rounds",
            "2",
            "--policy",
            "equal",
            "--network",
            "netns",
            "--set",
            "seed=3",
        ]
    )
    # Under a planning policy (equal) --rounds cuts the plan: policy.max_rounds.
    assert flag_overrides(args) == [
        "seed=3",
        "clients.num_clients=4",
        "policy.name='equal'",
        "policy.max_rounds=2",
        "run.network='netns'",
        "link.backend='tc'",
    ]


def test_bad_override_exits_2_naming_the_field(capsys) -> None:
    assert main(["plan", "--set", "channel.bandwidth_hz=-1"]) == 2
    assert "channel.bandwidth_hz" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["plan", "--bandwidth-mhz=-1"], "--bandwidth-mhz: must be > 0, got -1.0"),
        (["plan", "--clients", "0"], "--clients: must be >= 1, got 0"),
        (["run", "--clients", "0", "--set", "clients.num_clients=2"], "--clients: must be >= 1"),
        (["plan", "--set", "clients.num_clients=0"], "clients.num_clients: must be >= 1, got 0"),
    ],
)
def test_a_value_refused_is_named_as_the_user_gave_it(argv: list[str], line: str, capsys) -> None:
    # Trial 5: "--bandwidth-mhz=-1" was refused as channel.bandwidth_hz, got -1000000.0.
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().startswith(f"fedsllm: error: {line}")


@pytest.mark.parametrize(
    "argv", [["--seed", "-1"], ["--set", "seed=-1"], ["--set", "seed=9223372036854775808"]]
)
def test_a_seed_no_generator_takes_exits_2_naming_seed(argv: list[str], capsys) -> None:
    # -1 reached numpy's default_rng and died there with a traceback.
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "Traceback" not in err


def test_an_unknown_log_level_is_refused_by_fedsllm_and_every_role(capsys) -> None:
    """`fedsllm --log-level foo plan` ran at INFO without a word."""
    from fed_server.controller_main import parse_args as controller_args
    from fedsllm.roles import role_arg_parser

    parsers = [
        build_parser().parse_args,
        role_arg_parser("client", None).parse_args,
        role_arg_parser("fed_server", None, fed_server=True).parse_args,
        lambda argv: controller_args([*argv, "--scenario", "x.json"]),
    ]
    for parse in parsers:
        with pytest.raises(SystemExit) as exit_:
            parse(["--log-level", "foo"])
        assert exit_.value.code == 2
        assert "argument --log-level: invalid choice: 'FOO'" in capsys.readouterr().err
    assert build_parser().parse_args(["--log-level", "debug", "plan"]).log_level == "DEBUG"
