"""`fedsllm calibrate`: fit the convergence constants a, v from short real runs.

For each local-step count n in --steps, one fixed_steps run of --max-rounds
rounds (evaluated every round) counts the rounds until the validation loss
first reaches --target-loss; rounds(n) = a / (1 - 2^(-n/v)) is fitted to
the runs that reached it, and the scenario is written to --write with
[convergence] a, v replaced. The logic lives in fedsllm.experiments.calibrate.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from fedsllm.cli import EXIT_OK, EXIT_RUN_FAILED, add_scenario_args


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="fit convergence constants a, v from short runs and write a scenario file",
        description=__doc__,
    )
    add_scenario_args(parser)
    parser.add_argument(
        "--target-loss", type=float, required=True, help="validation loss that counts as trained"
    )
    parser.add_argument(
        "--steps", default="1,2,4,8", help="local-step counts to run (default 1,2,4,8)"
    )
    parser.add_argument(
        "--max-rounds", type=int, default=10, help="rounds per calibration run (default 10)"
    )
    parser.add_argument(
        "--write", required=True, help="scenario TOML to write with the fitted a, v"
    )
    parser.add_argument(
        "--out", help="directory of the runs (default runs/calibrate-<name>-<timestamp>)"
    )
    parser.set_defaults(func=calibrate_command)


def _f(x: float, digits: int = 4) -> str:
    return "-" if not math.isfinite(x) else f"{x:.{digits}f}"


def calibrate_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedsllm.config import load_scenario
    from fedsllm.errors import ConfigError
    from fedsllm.experiments.calibrate import (
        calibration_doc,
        check_calibration_args,
        dump_json,
        fit_points,
        parse_steps,
        run_calibration,
        write_calibrated,
    )
    from fedsllm.launch import fresh_out_dir

    steps = parse_steps(args.steps)
    check_calibration_args(args.target_loss, args.max_rounds)
    write_path = Path(args.write)
    if not write_path.parent.is_dir():
        raise ConfigError("--write", str(write_path), "its directory does not exist")
    if write_path.is_dir():
        raise ConfigError("--write", str(write_path), "is a directory")
    base = load_scenario(args.scenario, args.overrides)
    out_dir = fresh_out_dir(args.out, f"calibrate-{base.name}")
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=max(console.width, 120))
    console.print(
        f"[bold]fedsllm calibrate[/] scenario [cyan]{base.name}[/]: target val loss "
        f"{args.target_loss:g}, n in {list(steps)}, {args.max_rounds} rounds each -> {out_dir}"
    )

    def on_run(n: int, run_dir: Path) -> None:
        console.print(f"running n = {n} local steps in {run_dir} ...")

    points, failures = run_calibration(
        base, steps, args.max_rounds, args.target_loss, out_dir, on_run
    )
    table = Table(title=f"rounds to val loss <= {args.target_loss:g}")
    for col in ("n", "rounds", "initial val", "best val", "final val", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")
    for p in points:
        table.add_row(
            str(p.num_steps),
            str(p.rounds) if p.rounds is not None else "not reached",
            _f(p.initial_val_loss),
            _f(p.best_val_loss),
            _f(p.final_val_loss),
            p.note,
        )
    console.print(table)
    if failures:
        n, err = failures[0]
        dump_json(
            out_dir / "calibrate.json",
            calibration_doc(base, points, None, args.target_loss, args.max_rounds),
        )
        print(
            f"fedsllm: error: calibration run n={n} failed: {err.proc.name} {err.reason} "
            f"(log {err.proc.log_path})",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    try:
        fit = fit_points(points, args.target_loss, args.max_rounds)
    except ConfigError:
        dump_json(
            out_dir / "calibrate.json",
            calibration_doc(base, points, None, args.target_loss, args.max_rounds),
        )
        raise
    written = write_calibrated(write_path, base, fit)
    dump_json(
        out_dir / "calibrate.json",
        calibration_doc(base, points, fit, args.target_loss, args.max_rounds, str(written)),
    )
    fit_table = Table(title=f"fit: a = {fit.a:.4f}, v = {fit.v:.4f} (rmse {fit.rmse:.3f} rounds)")
    for col in ("n", "rounds", "fitted", "residual"):
        fit_table.add_column(col, justify="right")
    for n, r, pr, res in zip(fit.num_steps, fit.rounds, fit.predicted, fit.residuals, strict=True):
        fit_table.add_row(str(n), f"{r:g}", f"{pr:.3f}", f"{res:+.3f}")
    console.print(fit_table)
    left_out = [p.num_steps for p in points if p.rounds is None]
    if left_out:
        console.print(f"left out of the fit (target not reached): n = {left_out}")
    console.print(f"a = {fit.a:.6g}, v = {fit.v:.6g}; wrote {written}")
    print(f"a = {fit.a:.6g}\nv = {fit.v:.6g}", file=sys.stdout)
    return EXIT_OK
