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

from fedsllm.cli import EXIT_OK, EXIT_RUN_FAILED, add_scenario_args
from fedsllm.cli import flag_overrides as shared_flag_overrides
from fedsllm.config import NETWORKS, POLICIES


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run", help="run federated split LoRA fine-tuning as real processes", description=__doc__
    )
    add_scenario_args(parser)
    parser.add_argument("--clients", type=int, help="number of clients K (clients.num_clients)")
    parser.add_argument("--rounds", type=int, help="global rounds (training.num_rounds)")
    parser.add_argument(
        "--local-steps", type=int, help="local iterations per round (training.num_local_steps)"
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
    parser.set_defaults(func=run_command)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The shared flag overrides, plus --network (netns implies the tc backend)."""
    out = shared_flag_overrides(args)
    if getattr(args, "network", None):
        out += [f"run.network={args.network!r}"]
        if args.network == "netns":
            out += ["link.backend='tc'"]
    return out


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsllm.config import load_scenario
    from fedsllm.launch import make_run_dir, run_processes
    from fedsllm.progress import RunProgress
    from fedsllm.summary import write_summary
    from fedsllm.trace import read_records

    overrides = flag_overrides(args)
    scenario = load_scenario(args.scenario, overrides)
    console = Console(stderr=True)
    if scenario.policy.name != "fixed_steps":
        if args.rounds:
            # Under an allocation policy the plan decides N; --rounds runs its first R.
            scenario = load_scenario(
                args.scenario, [*overrides, f"policy.max_rounds={args.rounds}"]
            )
        if args.local_steps:
            console.print(
                f"[yellow]warning:[/] policy {scenario.policy.name} decides the local steps "
                "(n from its eta); --local-steps applies to policy fixed_steps only"
            )
    run_dir = make_run_dir(args.out, scenario)
    console.print(
        f"[bold]fedsllm run[/] scenario [cyan]{scenario.name}[/]: "
        f"{scenario.clients.num_clients} clients, {plan_text(scenario)} -> {run_dir}"
    )
    progress = RunProgress(scenario, run_dir / "trace", console, enabled=not args.quiet)
    with progress:
        outcome = run_processes(scenario, run_dir, on_tick=progress.update)
    summary = write_summary(
        run_dir, outcome, read_records(run_dir / "trace"), scenario_name=scenario.name
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
            f"report: {report.report_md} (mean |error| of the delay model "
            f"{report.mean_abs_error_pct:.1f}% over {report.num_rounds} rounds)"
        )
    if outcome.failed is not None:
        proc = outcome.failed.proc
        console.print(f"[bold red]run failed:[/] {outcome.failed}")
        console.print(
            f"last lines of {proc.log_path}:\n{proc.log_tail()}", markup=False, highlight=False
        )
        return EXIT_RUN_FAILED
    console.print(f"run directory: {run_dir}")
    print(str(run_dir), file=sys.stdout)
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
    links = Table(title="per-client links (uplink) and devices")
    for col in (
        "client",
        "bandwidth MHz",
        "allocated Mbit/s",
        "achieved Mbit/s",
        "compute overrun s",
    ):
        links.add_column(col, justify="right")
    for link in summary.links:
        links.add_row(
            str(link.client),
            fmt(link.allocated_bandwidth_hz / 1e6, 3),
            fmt(link.allocated_uplink_bps / 1e6, 3),
            fmt(link.achieved_uplink_bps / 1e6, 3),
            fmt(link.overrun_s, 3),
        )
    console.print(links)
