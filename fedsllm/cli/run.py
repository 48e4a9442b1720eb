"""`fedsllm run`: one real federated split fine-tuning run on this machine.

Resolves the scenario (flags are sugar for --set overrides), starts every
role as its own process through fedsllm.launch, shows progress from the
trace files, and prints the per-round summary. Exits non-zero naming the
failing process and its error; 128 + N when signal N (SIGINT, SIGTERM,
SIGHUP) stopped it, once the run directory says so. Output nobody can read
any more (a pipe whose reader exited, a closed terminal) is dropped and the
run goes on (fedsllm.output.LauncherOutput).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from fedsllm.cli import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    add_memory_check_arg,
    add_scenario_args,
    check_run_memory,
)
from fedsllm.cli import flag_overrides as shared_flag_overrides
from fedsllm.config import NETWORKS, POLICIES, RESTART_POLICIES


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
    parser.add_argument(
        "--restart",
        choices=RESTART_POLICIES,
        help="when a role dies while clients still run: never (default; the run stops) "
        "or on-failure (start it again after a short backoff, at most run.max_restarts "
        "times per role, default 3; a client that exits 0 is done) (run.restart)",
    )
    parser.add_argument(
        "--faults",
        metavar="SPEC",
        help="inject faults, e.g. 'kill:client_1@round=3;restart=2s,stop:main_server@t=20s;"
        "for=5s' (run.faults; `--faults help` lists the kinds); outage needs --network netns",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the interrupted run in RUN_DIR from its roles' stores (same "
        "scenario, directories and credentials); only --restart, --faults, --quiet and "
        "--skip-memory-check may be given with it",
    )
    add_memory_check_arg(parser)
    parser.set_defaults(func=run_command)


RESUME_CONFLICTS = {
    "scenario": "--scenario",
    "overrides": "--set",
    "clients": "--clients",
    "rounds": "--rounds",
    "local_steps": "--local-steps",
    "seed": "--seed",
    "policy": "--policy",
    "network": "--network",
    "out": "--out",
    "tls": "--tls",
    "insecure": "--insecure",
}
"""Flags that would change what an interrupted run is: refused with --resume (the
run continues as its scenario.json says)."""


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
    return out + launcher_overrides(args)


def launcher_overrides(args: argparse.Namespace) -> list[str]:
    """--restart: a launcher-only field (allowed with --resume too). --faults is
    applied by `with_fault_flag`, once the scenario it is checked against exists."""
    return [f"run.restart={args.restart!r}"] if getattr(args, "restart", None) else []


def with_fault_flag(args: argparse.Namespace, scenario: Any) -> Any:
    """The scenario with --faults as run.faults, checked against the resolved scenario
    (its clients, its network) and naming the flag: ConfigError, exit 2, before
    anything is created."""
    import dataclasses

    from fedsllm.config import check_faults

    if getattr(args, "faults", None) is None:
        return scenario
    check_faults(args.faults, scenario.clients.num_clients, scenario.run.network, "--faults")
    run = dataclasses.replace(scenario.run, faults=args.faults.strip())
    return dataclasses.replace(scenario, run=run)


def given(value: Any) -> bool:
    """Whether a flag was given, from its parsed value: argparse's defaults here are
    None (valued flags), False (switches) and [] (--set). Checked by identity, not
    `in`: 0 == False, so `--seed 0` or `--rounds 0` would read as not given."""
    return not (value is None or value is False or (isinstance(value, list) and not value))


def resumed_scenario(args: argparse.Namespace) -> tuple[Any, Path]:
    """The scenario of the run in --resume RUN_DIR (its scenario.json) with --restart
    applied, and the run directory; ConfigError naming --resume when
    RUN_DIR is not a run directory, or naming a flag that cannot be combined."""
    from fedsllm.config import apply_overrides, from_dict
    from fedsllm.errors import ConfigError

    for attr, flag in RESUME_CONFLICTS.items():
        value = getattr(args, attr, None)
        if given(value):
            raise ConfigError(
                flag,
                value,
                "cannot be combined with --resume (the run continues as its scenario.json says)",
            )
    run_dir = Path(args.resume)
    path = run_dir / "scenario.json"
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or "scenario_hash" not in doc:
            raise ValueError("no scenario_hash")
        doc.pop("scenario_hash")
        # The faults of an earlier launch are not injected again: only --faults'.
        if isinstance(doc.get("run"), dict):
            doc["run"]["faults"] = ""
        if not (run_dir / "logs").is_dir():
            raise ValueError("no logs/")
    except (OSError, ValueError):
        raise ConfigError(
            "--resume",
            str(run_dir),
            "not a run directory of fedsllm run (no readable scenario.json and logs/)",
        ) from None
    scenario = from_dict(apply_overrides(doc, launcher_overrides(args)))
    return scenario, run_dir.resolve()


def run_command(args: argparse.Namespace) -> int:
    """Run (or resume) one run, holding its directory's launcher lock throughout."""
    if getattr(args, "faults", None) == "help":
        from fedsllm.faults import describe_kinds

        print("\n".join(describe_kinds()))
        return EXIT_OK
    from fedsllm.output import LauncherOutput

    with LauncherOutput() as output, contextlib.ExitStack() as held:
        return _run_command(args, held, output)


def _run_command(args: argparse.Namespace, held: contextlib.ExitStack, output: Any) -> int:
    """run_command's body; `held` keeps the run directory's launcher lock
    (fedsllm.launch.run_dir_lock) until the run is over."""
    from rich.console import Console

    from fedsllm.config import load_scenario
    from fedsllm.launch import (
        RunAlreadyComplete,
        check_launch,
        check_resume,
        make_run_dir,
        run_dir_lock,
        run_processes,
    )
    from fedsllm.progress import RunProgress, prepare_base
    from fedsllm.summary import write_summary
    from fedsllm.trace import read_telemetry

    resume = getattr(args, "resume", None) is not None
    if resume:
        scenario, run_dir = resumed_scenario(args)
        scenario = with_fault_flag(args, scenario)
        # Before anything reads or writes the run: a launcher may still run it.
        # Once the lock is ours, and before anything is written (the lock's pid
        # included), every store the roles would resume from is read: a damaged
        # one is refused naming its file (exit 2), a run with no round left is
        # said to be complete (exit 0), and the run directory is as it was.
        try:
            held.enter_context(
                run_dir_lock(run_dir, "--resume", lambda: check_resume(run_dir, scenario))
            )
        except RunAlreadyComplete as done:
            print(done, file=sys.stdout)
            return EXIT_OK
    else:
        scenario = load_scenario(args.scenario, flag_overrides(args))
        scenario = with_fault_flag(args, scenario)
    console = Console(stderr=True)
    check_run_memory(scenario, args)
    check_launch(scenario)  # what would otherwise fail only after the roles started
    if resume:
        for sub in ("logs", "trace", "adapters"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
    else:
        run_dir = make_run_dir(args.out, scenario)
        held.enter_context(run_dir_lock(run_dir, "--out"))
    verb = "resuming" if resume else "->"
    console.print(
        f"[bold]fedsllm run[/] scenario [cyan]{scenario.name}[/]: "
        f"{scenario.clients.num_clients} clients, {plan_text(scenario)} {verb} {run_dir}"
    )
    prepare_base(scenario, console, enabled=not args.quiet)
    progress = RunProgress(scenario, run_dir / "trace", console, enabled=not args.quiet)

    def tick() -> None:
        output.probe()
        progress.update()

    with progress:
        outcome = run_processes(
            scenario,
            run_dir,
            on_tick=tick,
            resume=resume,
            raise_interrupt=False,
            output_dropped=output.dropped,
        )
    if outcome.stop_signal == signal.SIGHUP:
        # A closing terminal sends more than one (its shell's, the kernel's): the
        # later ones must not cut the records below short.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    summary = write_summary(
        run_dir,
        outcome,
        read_telemetry(run_dir / "trace"),
        scenario_name=scenario.name,
        time_dilation=scenario.link.time_dilation,
    )
    print_summary(console, summary)
    print_resilience(console, run_dir)
    if outcome.stop_signal is not None:
        return stopped_by_signal(console, run_dir, outcome)
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
        console.print(f"report: {report.report_md.name} ({report.headline()})")
        hint = report.overrun_hint(scenario.link.time_dilation, scenario.clients.num_clients)
        if hint:
            console.print(f"[yellow]hint:[/] {hint}")
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


def stopped_by_signal(console: Any, run_dir: Path, outcome: Any) -> int:
    """A stop signal came while the roles ran: every role is stopped and the run
    directory says so; say how to go on, write no report (the user asked to
    stop), and exit as the signal asks: 128 + N (130 Ctrl-C, 143 SIGTERM, 129
    SIGHUP)."""
    from rich.markup import escape

    name = signal.Signals(outcome.stop_signal).name
    if outcome.interrupted:
        console.print(
            f"[bold yellow]run {outcome.interrupted}[/]: every role stopped; "
            f"continue it with: fedsllm run --resume {escape(str(run_dir))}",
            soft_wrap=True,
        )
    else:  # the clients were done before the launcher saw the signal
        console.print(
            f"run completed; {name} came as it ended, so no report was written "
            f"(write it with: fedsllm report {escape(str(run_dir))})",
            soft_wrap=True,
        )
    return 128 + int(outcome.stop_signal)


def plan_text(scenario: Any) -> str:
    """What the banner says about rounds: fixed, or left to the controller's plan."""
    from fedsllm.words import counted

    training, policy = scenario.training, scenario.policy
    if policy.name == "fixed_steps":
        rounds, steps = training.num_rounds, training.num_local_steps
        return f"{counted(rounds, 'round')} x {counted(steps, 'local step')}"
    cap = f", at most {counted(policy.max_rounds, 'round')}" if policy.max_rounds else ""
    return f"policy {policy.name} (the controller plans rounds and local steps{cap})"


def print_summary(console: Any, summary: Any) -> None:
    from rich.table import Table

    def fmt(x: float, digits: int = 4) -> str:
        return "-" if math.isnan(x) else f"{x:.{digits}f}"

    dilation = summary.time_dilation
    title = "per-round summary"
    if dilation != 1.0:  # say which seconds: the plan and the report use emulated ones
        title += f" (time dilated x{dilation:g}: emulated s = wall s / {dilation:g})"
    table = Table(title=title)
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


def print_resilience(console: Any, run_dir: Path) -> None:
    """Faults, restarts, resumes and the audit, as fedsllm.summary words them,
    from the summary just written (the audit reads every update of every
    round: once per run is enough)."""
    from fedsllm.summary import resilience_lines

    summary = json.loads((run_dir / "summary.json").read_text())
    for line in resilience_lines(run_dir, summary.get("resilience")):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
