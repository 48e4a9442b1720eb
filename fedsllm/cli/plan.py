"""`fedsllm plan`: solve every allocation policy for a scenario and show or print them.

Reads the scenario (flags are sugar for --set overrides), builds the delay
inputs, runs fedsllm.delay.policies and renders a rich table, or one JSON
document (--json) holding the per-client inputs actually used and every
policy's result, enough to recompute the optimum elsewhere.
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


def plan_document(scenario: Any, round_index: int = 0) -> dict[str, Any]:
    """Inputs, counts and every policy's allocation of `scenario`, JSON-ready."""
    import dataclasses

    from fedsllm.delay.inputs import delay_inputs
    from fedsllm.delay.policies import read_shares_file, reduction, solve_policies
    from fedsllm.link.channel import client_distances
    from fedsllm.model.counts import count_scenario

    counts = count_scenario(scenario)
    inputs = delay_inputs(scenario, round_index, counts)
    pol = scenario.policy
    fractions = read_shares_file(pol.shares_file, inputs.num_clients) if pol.shares_file else None
    results = solve_policies(
        inputs, pol.solver, pol.fixed_eta, fractions, pol.num_random_draws, scenario.seed
    )
    equal = results["equal"]
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
    policies = {}
    for name, alloc in results.items():
        doc = alloc.to_dict()
        n = alloc.n
        doc["bits_per_round"] = (n * inputs.bits_per_iter + inputs.omega_bits).tolist()
        doc["reduction_vs_equal"] = reduction(alloc, equal)
        policies[name] = doc
    return _finite(
        {
            "model_section": "docs/MODEL.md sections 2-5",
            "round_index": round_index,
            "scenario": scenario.to_dict(),
            "counts": counts_doc,
            "inputs": inp,
            "policies": policies,
            "optimal_reduction_vs_equal": reduction(results["optimal"], equal),
        }
    )


def _render(doc: dict[str, Any]) -> None:
    from rich.console import Console
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
        "reduction vs equal",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, p in policies.items():
        table.add_row(
            name,
            f"{p['total_delay_s']:.4g}",
            f"{p['eta']:.4f}",
            f"{p['n']:.3f}",
            str(p["n_int"]),
            f"{p['num_rounds']:.3f}",
            f"{p['total_delay_int_s']:.4g}",
            f"{p['round_time_s']:.4g}",
            f"{100 * p['reduction_vs_equal']:.2f}%",
        )
    console.print(table)
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
    console.print(
        f"Optimum cuts the delay by {100 * doc['optimal_reduction_vs_equal']:.2f}% "
        "against equal shares at the fixed eta (the unoptimized case)."
    )


def run(args: argparse.Namespace) -> int:
    from fedsllm.config import load_scenario

    scenario = load_scenario(args.scenario, scenario_overrides(args))
    doc = plan_document(scenario)
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        _render(doc)
    return 0
