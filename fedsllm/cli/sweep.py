"""`fedsllm sweep`: delay of every policy against one parameter, as CSV and PNG.

The sweeping itself is fedsllm.delay.sweeps; this module parses flags,
writes `sweep_<param>.csv` and `sweep_<param>.png` (matplotlib, Agg) under
--out, and prints the optimum's reduction against the unoptimized case per
point and on average. `--paper` runs the standard set (PAPER_SWEEPS).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from fedsllm.cli import add_scenario_args
from fedsllm.errors import ConfigError


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
    parser.add_argument("--out", default="sweep_out", help="output directory (default sweep_out)")
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
        raise ConfigError("--values", text, "give comma-separated numbers, e.g. 5,10,20")
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


def write_csv(path: Path, points: list[Any]) -> None:
    policies = list(points[0].mean_delay_s)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                points[0].param,
                "num_seeds",
                *[f"T_{p}_s" for p in policies],
                *[f"eta_{p}" for p in policies],
                "reduction_optimal_vs_equal",
            ]
        )
        for pt in points:
            writer.writerow(
                [
                    pt.value,
                    pt.num_seeds,
                    *[f"{pt.mean_delay_s[p]:.9g}" for p in policies],
                    *[f"{pt.mean_eta[p]:.9g}" for p in policies],
                    f"{pt.reduction:.9g}",
                ]
            )


def write_png(path: Path, points: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    param = points[0].param
    xs = [pt.value for pt in points]
    fig, (ax, ax_red) = plt.subplots(
        2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for policy in points[0].mean_delay_s:
        ax.plot(xs, [pt.mean_delay_s[policy] for pt in points], marker="o", label=policy)
    ax.set_yscale("log")
    ax.set_ylabel("training delay T (s)")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Delay against {param} (mean over {points[0].num_seeds} placements)")
    ax_red.plot(xs, [100 * pt.reduction for pt in points], marker="s", color="k")
    ax_red.set_ylabel("optimal vs equal (%)")
    ax_red.set_xlabel(param)
    ax_red.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from fedsllm.config import apply_overrides, from_dict, load_dict
    from fedsllm.delay.sweeps import (
        PAPER_BASE_CLIENTS,
        PAPER_SWEEPS,
        average_reduction,
        check_param,
        sweep,
    )

    base = apply_overrides(load_dict(args.scenario), args.overrides)
    if args.paper:
        base = apply_overrides(base, [f"clients.num_clients={PAPER_BASE_CLIENTS}"])
        jobs = list(PAPER_SWEEPS.items())
    else:
        if args.param is None:
            raise ConfigError("--param", None, "required unless --paper")
        check_param(args.param)
        jobs = [(args.param, tuple(parse_values(args.values)))]
    scen = from_dict(base)  # validate the base once, before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_points = []
    for param, values in jobs:
        points = sweep(base, param, values, args.seeds, args.solver)
        all_points.extend(points)
        write_csv(out / f"sweep_{param}.csv", points)
        write_png(out / f"sweep_{param}.png", points)
        print(
            f"{param}: "
            + ", ".join(f"{pt.value:g} -> {100 * pt.reduction:.2f}%" for pt in points)
            + f"  (average {100 * average_reduction(points):.2f}%)"
        )
    avg = 100 * average_reduction(all_points)
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
            f"{len(all_points)} points: {avg:.2f}% (paper: 47.63%)"
        )
    else:
        print(f"Average delay reduction against the unoptimized case: {avg:.2f}%")
    print(f"Wrote CSV and PNG files under {out}")
    return 0
