"""`fedsllm sweep`: delay of every policy against one parameter, as CSV and PNG.

The sweeping itself is fedsllm.delay.sweeps; this module parses flags,
writes `sweep_<param>.csv` and `sweep_<param>.png` (matplotlib, Agg) under
--out (default runs/sweep-<scenario>-<timestamp>, beside the runs, which git
ignores), and prints the optimum's reduction against the unoptimized case
per point and on average. `--paper` runs the standard set (PAPER_SWEEPS).
Baselines judged absurd or infeasible (fedsllm.delay.policies.judge_delay)
are named as such in the CSV, the printout and the plot, whose delay axis
stops at ABSURD_FACTOR times the optimum so that the others stay readable.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from fedsllm.cli import add_scenario_args
from fedsllm.errors import NO_VALUE, ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="delay of every allocation policy against one parameter (CSV + PNG)",
        description="Sweep one parameter of the delay model (docs/MODEL.md section 5) and plot "
        "the delay of every policy; --paper runs the standard set.",
    )
    add_scenario_args(parser)
    parser.add_argument(
        "--param",
        default=None,
        help="num_clients, bandwidth_mhz, tx_power_dbm, cell_radius_m or smashed_scale",
    )
    parser.add_argument("--values", default=None, help="comma-separated values, e.g. 5,10,20")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory, created if needed; sweep files in it are replaced "
        "(default runs/sweep-<scenario>-<timestamp>)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="random placements averaged per point (default 3)"
    )
    parser.add_argument(
        "--solver",
        choices=("exact", "cvxpy"),
        default="exact",
        help="inner solver of the optimal policies (default exact)",
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="run the standard set of sweeps and print the average reduction",
    )
    parser.set_defaults(func=run)


def parse_values(text: str | None) -> list[float]:
    if not text:
        raise ConfigError(
            "--values",
            NO_VALUE if text is None else text,
            "give comma-separated numbers, e.g. 5,10,20",
        )
    out = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError("--values", item, "must be a number") from None
        if not math.isfinite(value):
            raise ConfigError("--values", item, "must be finite")
        out.append(value)
    return out


def _num(x: float) -> str:
    """A CSV number; empty for NaN or inf (an infeasible policy has no delay)."""
    return f"{x:.9g}" if math.isfinite(x) else ""


def write_csv(path: Path, points: list[Any]) -> None:
    """One row per point: mean delays and etas, then per policy T / T_optimal and its
    status (ok, "absurd (x... the optimum)" or infeasible), then the optimum's
    reduction against equal (a fraction: 0.3 = 30% less delay than equal)."""
    policies = list(points[0].mean_delay_s)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                points[0].param,
                "num_seeds",
                *[f"T_{p}_s" for p in policies],
                *[f"eta_{p}" for p in policies],
                *[f"T_{p}_over_optimal" for p in policies],
                *[f"status_{p}" for p in policies],
                "reduction_optimal_vs_equal",
            ]
        )
        for pt in points:
            writer.writerow(
                [
                    pt.value,
                    pt.num_seeds,
                    *[_num(pt.mean_delay_s[p]) for p in policies],
                    *[_num(pt.mean_eta[p]) for p in policies],
                    *[_num(pt.delay_ratio[p]) for p in policies],
                    *[pt.label(p) or pt.status[p] for p in policies],
                    _num(pt.reduction) if pt.status["equal"] == "ok" else pt.label("equal"),
                ]
            )


def plot_ceiling(points: list[Any]) -> float:
    """Top of the delay axis: ABSURD_FACTOR times the largest optimum, so every delay
    that is not absurd at its own point fits, and only absurd ones are clipped."""
    from fedsllm.delay.policies import ABSURD_FACTOR

    return ABSURD_FACTOR * max(pt.mean_delay_s["optimal"] for pt in points)


def write_png(path: Path, points: list[Any]) -> tuple[float, float]:
    """Delay per policy on a log axis that stops at `plot_ceiling`; flagged points are drawn
    at their value or at the ceiling with a hollow triangle (absurd, annotated with the
    factor) or a cross (infeasible), and the policy's legend entry says so. Returns the
    delay axis' limits, so that a test can hold them against the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsllm.delay.policies import ABSURD_FACTOR, format_factor

    param = points[0].param
    xs = [pt.value for pt in points]
    top = plot_ceiling(points)
    fig, (ax, ax_red) = plt.subplots(
        2, 1, figsize=(9.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ok_values = []
    for policy in points[0].mean_delay_s:
        status = [pt.status[policy] for pt in points]
        ys = [min(pt.mean_delay_s[policy], top) for pt in points]
        flagged = sorted({s for s in status if s != "ok"})
        label = policy + (f" ({', '.join(flagged)})" if flagged else "")
        (line,) = ax.plot(xs, ys, linestyle="-" if not flagged else ":", label=label)
        color = line.get_color()
        for x, y, st, pt in zip(xs, ys, status, points, strict=True):
            if st == "ok":
                ax.plot([x], [y], marker="o", color=color)
                ok_values.append(y)
            elif st == "absurd":
                ax.plot([x], [y], marker="^", markerfacecolor="none", color=color, markersize=9)
                ax.annotate(
                    format_factor(pt.delay_ratio[policy]),
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, -13),
                    ha="center",
                    fontsize="x-small",
                    color=color,
                )
            else:
                ax.plot([x], [top], marker="X", color=color, markersize=9)
    ax.set_yscale("log")
    bottom = 0.7 * min(ok_values) if ok_values else top / (10 * ABSURD_FACTOR)
    ax.set_ylim(bottom, 1.6 * top)
    ax.axhline(top, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_ylabel("training delay T (s)")
    # Outside the axes, so that it never hides the markers clipped at the top.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.text(
        1.01,
        0.0,
        f"absurd: T > {ABSURD_FACTOR:g}x the optimum\n(hollow triangle, factor written;\n"
        f"above the dashed line\nit is clipped to it)\ninfeasible: cross",
        transform=ax.transAxes,
        fontsize="x-small",
        va="bottom",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Delay against {param} (mean over {points[0].num_seeds} placements)")
    kept = [(pt.value, 100 * pt.reduction) for pt in points if pt.status["equal"] == "ok"]
    if kept:
        ax_red.plot(*zip(*kept, strict=True), marker="s", color="k")
    ax_red.set_ylabel("optimal: % less\ndelay than equal")
    ax_red.set_xlabel(param)
    ax_red.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    limits = ax.get_ylim()
    plt.close(fig)
    return float(limits[0]), float(limits[1])


def flagged_text(points: list[Any]) -> str:
    """'proportional absurd at 5 (x64), 50 (x3903); ...', or "" when nothing is flagged."""
    from fedsllm.delay.policies import format_factor

    parts = []
    for policy in points[0].mean_delay_s:
        for status in ("absurd", "infeasible"):
            bad = [pt for pt in points if pt.status[policy] == status]
            if bad:
                at = ", ".join(
                    f"{pt.value:g}"
                    + (f" ({format_factor(pt.delay_ratio[policy])})" if status == "absurd" else "")
                    for pt in bad
                )
                parts.append(f"{policy} {status} at {at}")
    return "; ".join(parts)


def _reduction_text(pt: Any) -> str:
    if pt.status["equal"] != "ok":
        return f"{pt.value:g} -> equal {pt.label('equal')}"
    return f"{pt.value:g} -> {100 * pt.reduction:.2f}%"


def run(args: argparse.Namespace) -> int:
    from fedsllm.config import apply_overrides, from_dict, load_dict
    from fedsllm.delay.sweeps import (
        PAPER_BASE_CLIENTS,
        PAPER_SWEEPS,
        average_reduction,
        check_param,
        sweep,
    )
    from fedsllm.launch import fresh_out_dir
    from fedsllm.paths import writable_dir

    base = apply_overrides(load_dict(args.scenario), args.overrides)
    if args.paper:
        for flag, given in (("--param", args.param), ("--values", args.values)):
            if given is not None:
                # --paper sweeps its own set; silently sweeping something else
                # than what was asked for would mislabel the results.
                raise ConfigError(flag, given, "cannot be combined with --paper")
        base = apply_overrides(base, [f"clients.num_clients={PAPER_BASE_CLIENTS}"])
        jobs = list(PAPER_SWEEPS.items())
    else:
        if args.param is None:
            raise ConfigError("--param", NO_VALUE, "required unless --paper")
        check_param(args.param)
        jobs = [(args.param, tuple(parse_values(args.values)))]
    scen = from_dict(base)  # validate the base once, before any work
    # Every point first: a bad value fails before any directory is made.
    results = [
        (param, sweep(base, param, values, args.seeds, args.solver)) for param, values in jobs
    ]
    # An explicit --out may be reused (sweep files are replaced, nothing else is touched);
    # the default is a fresh runs/ directory, like run's and compare's.
    out = writable_dir(args.out, "--out") if args.out else fresh_out_dir(None, f"sweep-{scen.name}")
    all_points = []
    for param, points in results:
        all_points.extend(points)
        write_csv(out / f"sweep_{param}.csv", points)
        write_png(out / f"sweep_{param}.png", points)
        print(
            f"{param}: optimal's % less delay than equal: "
            + ", ".join(_reduction_text(pt) for pt in points)
            + f"  (average {100 * average_reduction(points):.2f}%)"
        )
        flagged = flagged_text(points)
        if flagged:
            print(f"  flagged baselines: {flagged}")
    avg = 100 * average_reduction(all_points)
    num_kept = sum(pt.status["equal"] == "ok" for pt in all_points)  # as average_reduction
    if args.paper:
        print(
            f"Parameters: model {scen.model.preset}, split {scen.split.split_layer}, "
            f"rank {scen.adapter.rank}, seq_len {scen.data.seq_len}, batch "
            f"{scen.training.batch_size}, base K={scen.clients.num_clients}, B="
            f"{scen.channel.bandwidth_hz / 1e6:g} MHz, p={scen.channel.tx_power_dbm:g} dBm, "
            f"radius {scen.channel.cell_radius_m:g} m, a={scen.convergence.a:g}, "
            f"v={scen.convergence.v:g}, fixed eta {scen.policy.fixed_eta:g}, "
            f"{args.seeds} placements per point, solver {args.solver}"
        )
        print(
            f"Average delay reduction of the optimum against the unoptimized case over "
            f"{num_kept} points: {avg:.2f}% less delay than equal (paper: 47.63%)"
        )
    else:
        print(
            f"Average delay reduction of the optimum against the unoptimized case: {avg:.2f}% "
            "less delay than equal"
        )
    print(f"Wrote CSV and PNG files under {out}")
    return 0
