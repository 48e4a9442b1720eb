"""`fedsllm calibrate`: fit the convergence constants a, v from short real runs.

For each local-step count n in --steps, one fixed_steps run of --max-rounds
rounds (evaluated every round) counts the rounds until the validation loss
first reaches --target-loss; rounds(n) = a / (1 - 2^(-n/v)) is fitted to
the runs that reached it, and the scenario is written to --write with
[convergence] a, v replaced. The validation loss of every run after every
round is printed, with the targets those runs would support, so that a
refused target can be replaced without guessing. A fit that measured
nothing (too few runs reached the target, every run took the same rounds, a
constant at its bound, a < 1) is refused with exit 2 and --write is left
untouched. The logic lives in fedsllm.experiments.calibrate.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsllm.cli import EXIT_OK, EXIT_RUN_FAILED, add_scenario_args

if TYPE_CHECKING:
    from rich.table import Table

    from fedsllm.experiments.calibrate import CalibrationPoint


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


MAX_ROUND_COLUMNS = 8
"""Rounds shown in the loss table; longer runs show an even spread, the last included."""


def _f(x: float, digits: int = 4) -> str:
    return "-" if not math.isfinite(x) else f"{x:.{digits}f}"


def _shown_rounds(num_rounds: int) -> list[int]:
    if num_rounds <= MAX_ROUND_COLUMNS:
        return list(range(num_rounds))
    step = (num_rounds - 1) / (MAX_ROUND_COLUMNS - 1)
    return sorted({round(i * step) for i in range(MAX_ROUND_COLUMNS)})


def loss_table(points: Sequence[CalibrationPoint], target_loss: float) -> Table:
    """Validation loss of each run before training and after each round, '*' where it
    is <= the target: the table a user picks a --target-loss from."""
    from rich import box
    from rich.table import Table

    num_rounds = max((len(p.val_curve) for p in points), default=0)
    shown = _shown_rounds(num_rounds)
    table = Table(
        title=f"val loss after each round (* = <= target {target_loss:g}; "
        "rounds = rounds to target)",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        show_edge=False,
    )
    for col in ("n", "rounds", "before", *(f"r{r + 1}" for r in shown), "best"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in points:
        cells = []
        for r in shown:
            x = p.val_curve[r] if r < len(p.val_curve) else math.nan
            mark = "*" if math.isfinite(x) and x <= target_loss else ""
            cells.append(_f(x, 3) + mark)
        table.add_row(
            str(p.num_steps),
            str(p.rounds) if p.rounds is not None else "never",
            _f(p.initial_val_loss, 3),
            *cells,
            _f(p.best_val_loss, 3),
        )
    return table


def calibrate_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedsllm.config import check_overrides_not_owned, load_scenario
    from fedsllm.errors import ConfigError
    from fedsllm.experiments.calibrate import (
        CALIBRATE_OWNED,
        calibration_doc,
        check_calibration_args,
        diagnose_calibration,
        dump_json,
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
    if not os.access(write_path.parent, os.W_OK) or (
        write_path.exists() and not os.access(write_path, os.W_OK)
    ):
        # Found now, not after the minutes of runs the fit needs.
        raise ConfigError("--write", str(write_path), "cannot write there (permission denied)")
    check_overrides_not_owned(args.overrides, CALIBRATE_OWNED)
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
    console.print(loss_table(points, args.target_loss))
    for p in points:
        if p.note:
            console.print(f"n = {p.num_steps}: {p.note}", highlight=False)
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
    result = diagnose_calibration(points, args.target_loss, args.max_rounds)
    advice = result.target_advice()
    if advice:
        console.print(advice, highlight=False)
    if not result.usable:
        # Nothing is written: the diagnostics go to calibrate.json, the reason to stderr.
        dump_json(
            out_dir / "calibrate.json",
            calibration_doc(base, points, result, args.target_loss, args.max_rounds),
        )
        raise result.error()
    fit = result.raise_if_unusable()
    written = write_calibrated(write_path, base, fit, args.target_loss)
    dump_json(
        out_dir / "calibrate.json",
        calibration_doc(base, points, result, args.target_loss, args.max_rounds, str(written)),
    )
    console.print(f"fit: a = {fit.a:.4f}, v = {fit.v:.4f} (rmse {fit.rmse:.3f} rounds)")
    fit_table = Table()
    for col in ("n", "rounds", "fitted", "residual"):
        fit_table.add_column(col, justify="right")
    for n, r, pr, res in zip(fit.num_steps, fit.rounds, fit.predicted, fit.residuals, strict=True):
        fit_table.add_row(str(n), f"{r:g}", f"{pr:.3f}", f"{res:+.3f}")
    console.print(fit_table)
    left_out = [p.num_steps for p in points if p.rounds is None]
    if left_out:
        console.print(f"left out of the fit (target not reached): n = {left_out}")
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"a = {fit.a:.6g}, v = {fit.v:.6g}; wrote {written}")
    print(f"a = {fit.a:.6g}\nv = {fit.v:.6g}", file=sys.stdout)
    return EXIT_OK
