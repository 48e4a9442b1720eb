"""`fedsllm plan`: solve every allocation policy for a scenario and show or print them.

Reads the scenario (flags are sugar for --set overrides), builds the delay
inputs, runs fedsllm.delay.policies and renders a rich table, or one JSON
document (--json) holding the per-client inputs actually used and every
policy's result, enough to recompute the optimum elsewhere. Each baseline
is compared as the optimum's percent less delay, unless
fedsllm.delay.policies.judge flags it absurd (over ABSURD_FACTOR times the
optimum's delay) or infeasible: then the table says so, with the reason,
and the JSON leaves the percentages null.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from fedsllm.cli import add_scenario_args, flag_overrides


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="solve the delay-minimizing allocation and its baselines (docs/MODEL.md)",
        description="Solve the bandwidth/accuracy allocation of docs/MODEL.md section 5 for a "
        "scenario and compare every policy.",
    )
    add_scenario_args(parser)
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help="number of clients (sugar for --set clients.num_clients=K)",
    )
    parser.add_argument(
        "--bandwidth-mhz",
        type=float,
        default=None,
        help="total uplink bandwidth in MHz (sugar for channel.bandwidth_hz)",
    )
    parser.add_argument("--seed", type=int, default=None, help="scenario seed")
    parser.add_argument(
        "--solver",
        choices=("exact", "cvxpy"),
        default=None,
        help="inner solver (sugar for policy.solver)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.set_defaults(func=run)


def scenario_overrides(args: argparse.Namespace) -> list[str]:
    """The shared flag overrides plus --bandwidth-mhz (they win over --set)."""
    out = flag_overrides(args)
    if args.bandwidth_mhz is not None:
        out.append(f"channel.bandwidth_hz={args.bandwidth_mhz * 1e6!r}")
    return out


def _finite(obj: Any) -> Any:
    """NaN/inf -> None so that the document is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _policy_doc(result: Any, inputs: Any, equal_delay_s: float | None) -> dict[str, Any]:
    """One policy's allocation (if any) plus its verdict; percentages only when it is ok."""
    alloc = result.allocation
    doc: dict[str, Any] = {"policy": result.policy, "total_delay_s": None}
    if alloc is not None:
        doc = alloc.to_dict()
        doc["bits_per_round"] = (alloc.n * inputs.bits_per_iter + inputs.omega_bits).tolist()
    ok = result.status == "ok"
    doc.update(
        verdict=result.status,
        verdict_label=result.label,
        verdict_reason=result.reason,
        delay_ratio_to_optimal=result.delay_ratio,
        optimal_less_delay=result.optimal_less_delay,
        reduction_vs_equal=(
            1.0 - alloc.total_delay_s / equal_delay_s
            if ok and alloc is not None and equal_delay_s
            else None
        ),
    )
    return doc


def plan_document(scenario: Any, round_index: int = 0) -> dict[str, Any]:
    """Inputs, counts and every policy's allocation and verdict of `scenario`, JSON-ready.

    Per policy: the allocation's fields, `verdict` (ok, absurd, infeasible),
    `verdict_label` (what the table prints), `verdict_reason`,
    `delay_ratio_to_optimal` (T / T_optimal), `optimal_less_delay` (1 -
    T_optimal / T) and `reduction_vs_equal` (1 - T / T_equal); the last two
    are null when the policy is flagged.
    """
    import dataclasses

    from fedsllm.delay.inputs import delay_inputs
    from fedsllm.delay.policies import ABSURD_FACTOR, compare_policies, read_shares_file
    from fedsllm.link.channel import client_distances
    from fedsllm.model.counts import count_scenario

    counts = count_scenario(scenario)
    inputs = delay_inputs(scenario, round_index, counts)
    pol = scenario.policy
    fractions = read_shares_file(pol.shares_file, inputs.num_clients) if pol.shares_file else None
    results = compare_policies(
        inputs, pol.solver, pol.fixed_eta, fractions, pol.num_random_draws, scenario.seed
    )
    equal = results["equal"]
    equal_delay = equal.allocation.total_delay_s if equal.allocation is not None else None
    inp = inputs.to_dict()
    inp["distance_m"] = client_distances(scenario).tolist()
    inp["snr_hz"] = inputs.snr_hz.tolist()
    inp["rate_ceiling_bps"] = inputs.rate_ceiling_bps.tolist()
    counts_doc = dataclasses.asdict(counts)
    counts_doc.update(
        phi_c=counts.phi_c,
        phi_s=counts.phi_s,
        client_adapter_bytes=counts.client_adapter_bytes,
        server_adapter_bytes=counts.server_adapter_bytes,
    )
    policies = {name: _policy_doc(result, inputs, equal_delay) for name, result in results.items()}
    return _finite(
        {
            "model_section": "docs/MODEL.md sections 2-5",
            "round_index": round_index,
            "scenario": scenario.to_dict(),
            "counts": counts_doc,
            "inputs": inp,
            "policies": policies,
            "absurd_factor": ABSURD_FACTOR,
            "optimal_reduction_vs_equal": equal.optimal_less_delay,
        }
    )


def _render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Narrow terminals (and captured output) would fold the numbers; keep them readable.
    console = Console(width=max(Console().width, 132))
    policies = doc["policies"]
    table = Table(
        title=f"Allocation policies (scenario {doc['scenario']['name']}, "
        f"K={len(doc['inputs']['gain'])}, "
        f"B={doc['inputs']['bandwidth_hz'] / 1e6:g} MHz)"
    )
    for col in (
        "policy",
        "T (s)",
        "eta",
        "n",
        "n_int",
        "N",
        "T with n_int (s)",
        "round (s)",
        "optimal: % less delay",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, p in policies.items():
        if p["verdict"] == "infeasible":
            table.add_row(name, *["-"] * 7, "infeasible")
            continue
        if name == "optimal":
            compared = "-"
        elif p["verdict"] == "ok":
            compared = f"{100 * p['optimal_less_delay']:.2f}%"
        else:
            compared = p["verdict_label"]
        table.add_row(
            name,
            f"{p['total_delay_s']:.4g}",
            f"{p['eta']:.4f}",
            f"{p['n']:.3f}",
            str(p["n_int"]),
            f"{p['num_rounds']:.3f}",
            f"{p['total_delay_int_s']:.4g}",
            f"{p['round_time_s']:.4g}",
            compared,
        )
    console.print(table)
    flagged = [(n, p) for n, p in policies.items() if p["verdict"] != "ok"]
    if flagged:
        console.print(
            f"Flagged baselines (absurd = more than {doc['absurd_factor']:g}x the optimum's "
            "delay, not compared in percent):"
        )
        for name, p in flagged:
            console.print(
                f"  {name}: {escape(p['verdict_label'])}: {escape(p['verdict_reason'])}",
                soft_wrap=True,
            )
    opt = policies["optimal"]
    inp = doc["inputs"]
    clients = Table(title=f"Optimal allocation per client ({opt['solver']}/{opt['backend']})")
    for col in (
        "k",
        "dist (m)",
        "gain (dB)",
        "p (dBm)",
        "f_k (GFLOP/s)",
        "tau (ms)",
        "b_k (MHz)",
        "share",
        "rate (Mbit/s)",
        "round (s)",
    ):
        clients.add_column(col, justify="right")
    for k, (g, p_w) in enumerate(zip(inp["gain"], inp["power_w"], strict=True)):
        clients.add_row(
            str(k),
            f"{inp['distance_m'][k]:.1f}",
            f"{10 * math.log10(g):.2f}" if g and g > 0 else "-inf",
            f"{10 * math.log10(p_w * 1e3):.1f}",
            f"{inp['client_flops'][k] / 1e9:.3g}",
            f"{inp['tau_s'][k] * 1e3:.3g}",
            f"{opt['bandwidth_hz'][k] / 1e6:.4g}",
            f"{opt['bandwidth_hz'][k] / inp['bandwidth_hz']:.4f}",
            f"{opt['rate_bps'][k] / 1e6:.4g}",
            f"{opt['client_round_s'][k]:.4g}",
        )
    console.print(clients)
    equal = policies["equal"]
    if equal["verdict"] == "ok":
        console.print(
            f"The optimum takes {100 * doc['optimal_reduction_vs_equal']:.2f}% less delay than "
            "equal shares at the fixed eta (the unoptimized case)."
        )
    else:
        console.print(
            f"Equal shares at the fixed eta (the unoptimized case) are {equal['verdict_label']}: "
            "no percentage is meaningful against them."
        )


def run(args: argparse.Namespace) -> int:
    from fedsllm.config import POLICIES, load_scenario

    # The plan evaluates every allocation policy, so any policy's parameter applies.
    scenario = load_scenario(args.scenario, scenario_overrides(args), evaluated=POLICIES)
    doc = plan_document(scenario)
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        _render(doc)
    return 0
