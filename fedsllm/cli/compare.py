"""`fedsllm compare`: one scenario under several policies, measured against predicted delay.

Each policy runs as a real emulated run (token-paced links unless the
scenario names a backend, compute padded to the device speeds) in
OUT/<policy>/, one after another; only policy.name differs between them.
Prints the comparison and writes OUT/compare.json, compare.md and
compare.png. The logic lives in fedsllm.experiments.compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fedsllm.cli import EXIT_OK, EXIT_RUN_FAILED, add_scenario_args


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="run one scenario under several policies; measured vs predicted delay reduction",
        description=__doc__,
    )
    add_scenario_args(parser)
    parser.add_argument(
        "--policies",
        required=True,
        help="comma-separated policies to run, e.g. optimal,equal (equal is the reference)",
    )
    parser.add_argument("--clients", type=int, help="number of clients K (clients.num_clients)")
    parser.add_argument("--seed", type=int, help="scenario seed")
    parser.add_argument("--out", help="output directory (default runs/compare-<name>-<timestamp>)")
    parser.set_defaults(func=compare_command)


def compare_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedsllm.cli import flag_overrides
    from fedsllm.config import apply_overrides, from_dict, load_dict
    from fedsllm.experiments.compare import (
        compare_base_dict,
        compare_doc,
        parse_policies,
        policy_scenario,
        reference_policy,
        run_policy,
        table_rows,
        write_outputs,
    )
    from fedsllm.launch import fresh_out_dir, make_run_dir

    policies = parse_policies(args.policies)
    overrides = flag_overrides(args)
    base = from_dict(compare_base_dict(apply_overrides(load_dict(args.scenario), overrides)))
    # Build (and so validate) every policy's scenario before anything runs.
    scenarios = [policy_scenario(base, p) for p in policies]
    reference, note = reference_policy(policies)
    out_dir = fresh_out_dir(args.out, f"compare-{base.name}")
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=max(console.width, 132))
    console.print(
        f"[bold]fedsllm compare[/] scenario [cyan]{base.name}[/]: policies "
        f"{', '.join(policies)}; {base.clients.num_clients} clients, link "
        f"{base.link.backend}, compute emulated -> {out_dir}"
    )
    results = []
    failed = None
    for scenario in scenarios:
        name = scenario.policy.name
        run_dir = make_run_dir(out_dir / name, scenario)
        console.print(f"running policy [cyan]{name}[/] in {run_dir} ...")
        t0 = time.monotonic()
        result = run_policy(scenario, run_dir)
        results.append(result)
        if not result.ok:
            failed = result
            break
        console.print(
            f"  done in {time.monotonic() - t0:.1f} s: {len(result.rounds)} rounds, measured "
            f"{result.measured_total_s:.3f} s, predicted {result.predicted_total_s:.3f} s"
        )
    doc = compare_doc(base, results, reference, note)
    json_path, md_path, png_path = write_outputs(doc, out_dir)
    header, rows = table_rows(doc)
    table = Table(title=f"policy comparison (reference: {reference})")
    for col in header:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in doc["notes"]:
        console.print(f"- {line}", markup=False, highlight=False)
    if failed is not None:
        print(
            f"fedsllm: error: policy {failed.policy}: {failed.failed_process} "
            f"{failed.failed_reason}",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    console.print(f"wrote {json_path}, {md_path.name}, {png_path.name}")
    print(str(out_dir), file=sys.stdout)
    return EXIT_OK
