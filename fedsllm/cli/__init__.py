"""The `fedsllm` command line: one module per subcommand, registered here.

Exit codes (documented in README.md):
    0  success
    1  a run failed (a role process exited non-zero, or training broke)
    2  bad input: a scenario field, a flag or a file (one line on stderr)
    3  the allocation problem is infeasible or a solver failed
    4  link emulation cannot be set up (privileges, kernel features)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fedsllm.errors import AllocationError, ConfigError, LinkError, WireError

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_ALLOCATION = 3
EXIT_LINK = 4

SUBCOMMANDS = (
    "run",
    "plan",
    "sweep",
    "export",
    "report",
    "compare",
    "calibrate",
    "certs",
    "compose",
    "watch",
)
"""Modules under fedsllm.cli, each with `register(subparsers)`; missing ones are skipped
so that the CLI grows one module at a time."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_log_level_arg(parser: argparse.ArgumentParser, default: str) -> None:
    """--log-level for `fedsllm` and every role: one of LOG_LEVELS, any case; argparse
    refuses anything else (exit 2, naming the flag) rather than logging at INFO."""
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"logging level: {', '.join(LOG_LEVELS)} (default {default})",
    )


def configure_logging(level: str = "INFO", role: str = "cli", client_id: int | None = None) -> None:
    """The one place that installs log handlers; called by `fedsllm` and each role's main."""
    tag = role if client_id is None else f"{role}[{client_id}]"
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s.%(msecs)03d {tag} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def add_scenario_args(parser: argparse.ArgumentParser) -> None:
    """--scenario and --set, shared by every subcommand that reads a scenario."""
    parser.add_argument(
        "--scenario",
        default=None,
        help="scenario TOML file (default: the built-in default scenario)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any scenario field, e.g. --set training.batch_size=4 "
        "(repeatable; values are TOML)",
    )


FLAG_PATHS = {
    "clients": "clients.num_clients",
    "seed": "seed",
    "policy": "policy.name",
    "solver": "policy.solver",
}
"""Everyday flags -> the scenario field each one sets (flags are sugar for --set)."""

FLAG_FIELDS = {**FLAG_PATHS, "bandwidth_mhz": "channel.bandwidth_hz"}
"""Every flag that sets a scenario field (attr -> field), the value conversions
included (plan's --bandwidth-mhz sets the field in Hz): a refused value is
reported under the flag the user typed, not the field it set (`flag_named`)."""


def flag_named(err: ConfigError, args: argparse.Namespace) -> ConfigError:
    """`err` about a field that a flag of this invocation set, re-addressed to that
    flag with the flag's own value ("--clients: must be >= 1, got 0" rather than
    "clients.num_clients: ..."); any other error as it is. Flags win over --set,
    so a field a flag set holds the flag's value."""
    for attr, path in FLAG_FIELDS.items():
        value = getattr(args, attr, None)
        if value is not None and err.path == path:
            return ConfigError(f"--{attr.replace('_', '-')}", value, err.reason)
    return err


ROUND_FLAG_PATHS: dict[str, tuple[str, str, str | None]] = {
    "rounds": ("--rounds", "training.num_rounds", "policy.max_rounds"),
    "local_steps": ("--local-steps", "training.num_local_steps", None),
}
"""Flags whose field depends on the policy: attr -> (flag, field under policy
fixed_steps, field under a planning policy). A planning policy decides N and n
itself, so --rounds runs the first R rounds of its plan and --local-steps has
nothing to set (None: refused, not dropped)."""


def flag_overrides(args: argparse.Namespace, policy: str | None = None) -> list[str]:
    """--set assignments, then the sugar flags a subcommand has (which win over --set).

    `policy` is the policy the runs will use; None = the scenario's, once --set
    and --policy apply (compare passes its own, since it replaces the scenario's).
    """
    out = list(args.overrides)
    for attr, path in FLAG_PATHS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{path}={value!r}" if isinstance(value, str) else f"{path}={value}")
    given = {a: getattr(args, a) for a in ROUND_FLAG_PATHS if getattr(args, a, None) is not None}
    if not given:
        return out
    if policy is None:
        from fedsllm.config import policy_name_of

        policy = policy_name_of(getattr(args, "scenario", None), out)
    for attr, value in given.items():
        flag, fixed_path, planned_path = ROUND_FLAG_PATHS[attr]
        if value < 1:
            raise ConfigError(flag, value, "must be >= 1")
        path = fixed_path if policy == "fixed_steps" else planned_path
        if path is None:
            raise ConfigError(
                flag,
                value,
                f"policy {policy} plans the local steps (n from its eta); {flag} applies "
                f"to policy fixed_steps only (--policy fixed_steps or "
                f"--set policy.name='fixed_steps')",
            )
        out.append(f"{path}={value}")
    return out


def add_memory_check_arg(parser: argparse.ArgumentParser) -> None:
    """--skip-memory-check, for every subcommand that starts role processes."""
    from fedsllm.resources import SKIP_FLAG

    parser.add_argument(
        SKIP_FLAG,
        dest="skip_memory_check",
        action="store_true",
        help="start even when the estimated memory of all role processes exceeds "
        "what this machine has available (the default refuses, exit 2)",
    )


def check_run_memory(scenario: object, args: argparse.Namespace) -> None:
    """Refuse a run that will not fit in memory before anything is started or written."""
    if getattr(args, "skip_memory_check", False):
        return
    from fedsllm.resources import available_memory_bytes, check_memory, scenario_memory

    check_memory(scenario_memory(scenario), available_memory_bytes())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsllm",
        description="Federated split LoRA fine-tuning testbed over emulated wireless links.",
    )
    add_log_level_arg(parser, "WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"fedsllm.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"fedsllm.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, "cli")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, WireError) as err:
        shown = flag_named(err, args) if isinstance(err, ConfigError) else err
        print(f"fedsllm: error: {shown}", file=sys.stderr)
        from fedsllm.paths import remove_made_dirs

        remove_made_dirs()  # refused input leaves no directory it made behind
        return EXIT_BAD_INPUT
    except AllocationError as err:
        print(f"fedsllm: allocation failed ({err.status}): {err}", file=sys.stderr)
        return EXIT_ALLOCATION
    except LinkError as err:
        print(f"fedsllm: link emulation: {err}", file=sys.stderr)
        return EXIT_LINK
    except KeyboardInterrupt:
        print("fedsllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
