"""`fedsllm run`: one real federated split fine-tuning run on this machine.

Resolves the scenario (flags are sugar for --set overrides), starts every
role as its own process through fedsllm.launch, shows progress from the
trace files, and prints the per-round summary. Exits non-zero naming the
failing process and its error.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from fedsllm.cli import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    add_memory_check_arg,
    add_scenario_args,
    check_run_memory,
)
from fedsllm.cli import flag_overrides as shared_flag_overrides
from fedsllm.config import NETWORKS, POLICIES


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run", help="run federated split LoRA fine-tuning as real processes", description=__doc__
    )
    add_scenario_args(parser)
    parser.add_argument("--clients", type=int, help="number of clients K (clients.num_clients)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="global rounds: under policy fixed_steps exactly R (training.num_rounds); "
        "under a planning policy the first R rounds of its plan (policy.max_rounds)",
    )
    parser.add_argument(
        "--local-steps",
        type=int,
        help="local iterations per round (training.num_local_steps); policy fixed_steps "
        "only, refused under a planning policy, which decides them",
    )
    parser.add_argument("--seed", type=int, help="scenario seed")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        help="bandwidth/iteration policy (policy.name); fixed_steps = no controller",
    )
    parser.add_argument(
        "--network",
        choices=NETWORKS,
        help="loopback, or netns: every role in its own network namespace, "
        "links shaped by tc (sets link.backend=tc; needs root)",
    )
    parser.add_argument("--out", help="run directory (default runs/<name>-<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every channel: a per-run CA and one certificate per role, "
        "each role given only its own (run.tls)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain gRPC on a non-loopback run.host (run.insecure); warned about "
        "in the log and the report",
    )
    add_memory_check_arg(parser)
    parser.set_defaults(func=run_command)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The shared flag overrides, plus --network (netns implies the tc backend)."""
    out = shared_flag_overrides(args)
    if getattr(args, "tls", False):
        out += ["run.tls=true"]
    if getattr(args, "insecure", False):
        out += ["run.insecure=true"]
    if getattr(args, "network", None):
        out += [f"run.network={args.network!r}"]
        if args.network == "netns":
            out += ["link.backend='tc'"]
    return out


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsllm.config import load_scenario
    from fedsllm.launch import make_run_dir, run_processes
    from fedsllm.progress import RunProgress, prepare_base
    from fedsllm.summary import write_summary
    from fedsllm.trace import read_telemetry

    scenario = load_scenario(args.scenario, flag_overrides(args))
    console = Console(stderr=True)
    check_run_memory(scenario, args)
    if scenario.policy.name != "fixed_steps":
        from fedsllm.delay.inputs import delay_inputs

        # The controller would refuse these (a < 1, ...) only after the roles started.
        delay_inputs(scenario)
    run_dir = make_run_dir(args.out, scenario)
    console.print(
        f"[bold]fedsllm run[/] scenario [cyan]{scenario.name}[/]: "
        f"{scenario.clients.num_clients} clients, {plan_text(scenario)} -> {run_dir}"
    )
    prepare_base(scenario, console, enabled=not args.quiet)
    progress = RunProgress(scenario, run_dir / "trace", console, enabled=not args.quiet)
    with progress:
        outcome = run_processes(scenario, run_dir, on_tick=progress.update)
    summary = write_summary(
        run_dir, outcome, read_telemetry(run_dir / "trace"), scenario_name=scenario.name
    )
    print_summary(console, summary)
    if outcome.failed is None:
        from fedsllm.report import write_report

        try:
            report = write_report(run_dir)
        except Exception as err:  # the run is intact; say what broke and fail loudly
            console.print(
                f"[bold red]report failed:[/] {type(err).__name__}: {err} "
                f"(run directory {run_dir} is complete; retry with fedsllm report)"
            )
            return EXIT_RUN_FAILED
        console.print(
            f"report: {report.report_md.name} (mean |error| of the delay model "
            f"{report.mean_abs_error_pct:.1f}% over {report.num_rounds} rounds)"
        )
    if outcome.failed is not None:
        proc = outcome.failed.proc
        console.print(f"[bold red]run failed:[/] {outcome.failed}")
        console.print(
            f"last lines of {proc.log_path}:\n{proc.log_tail()}", markup=False, highlight=False
        )
        return EXIT_RUN_FAILED
    # Said once, on stdout: the bare path when a script reads it, a label on a terminal.
    label = "run directory: " if sys.stdout.isatty() else ""
    print(f"{label}{run_dir}", file=sys.stdout)
    return EXIT_OK


def plan_text(scenario: Any) -> str:
    """What the banner says about rounds: fixed, or left to the controller's plan."""
    training, policy = scenario.training, scenario.policy
    if policy.name == "fixed_steps":
        return f"{training.num_rounds} rounds x {training.num_local_steps} local steps"
    cap = f", at most {policy.max_rounds} rounds" if policy.max_rounds else ""
    return f"policy {policy.name} (the controller plans rounds and local steps{cap})"


def print_summary(console: Any, summary: Any) -> None:
    from rich.table import Table

    def fmt(x: float, digits: int = 4) -> str:
        return "-" if math.isnan(x) else f"{x:.{digits}f}"

    table = Table(title="per-round summary")
    for col in ("round", "clients", "steps", "train loss", "val loss", "wall s"):
        table.add_column(col, justify="right")
    table.add_row("init", "", "", "", fmt(summary.initial_val_loss), "")
    for r in summary.rounds:
        table.add_row(
            str(r.round),
            str(r.num_clients),
            str(r.num_steps),
            fmt(r.train_loss),
            fmt(r.val_loss),
            fmt(r.wall_s, 2),
        )
    console.print(table)
    if not summary.links:
        return
    links = Table(title="per-client links (uplink allocated vs achieved, downlink) and devices")
    for col in (
        "client",
        "bandwidth MHz",
        "allocated Mbit/s",
        "achieved Mbit/s",
        "downlink Mbit/s",
        "compute overrun s",
    ):
        links.add_column(col, justify="right")
    for link in summary.links:
        links.add_row(
            str(link.client),
            fmt(link.allocated_bandwidth_hz / 1e6, 3),
            fmt(link.allocated_uplink_bps / 1e6, 3),
            fmt(link.achieved_uplink_bps / 1e6, 3),
            fmt(link.downlink_bps / 1e6, 3) if link.downlink_paced else "unshaped",
            fmt(link.overrun_s, 3),
        )
    console.print(links)
