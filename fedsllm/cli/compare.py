"""`fedsllm compare`: one scenario under several policies, measured against predicted delay.

Each policy runs as a real emulated run (token-paced links unless the
scenario names a backend, compute padded to the device speeds) in
OUT/<policy>/, one after another; only policy.name differs between them.
Prints the comparison and writes OUT/compare.json, compare.md and
compare.png. --rounds R runs only the first R rounds of each plan
(policy.max_rounds); the table then says which plans were cut and gives
each whole plan's predicted delay beside the measured one. The logic lives
in fedsllm.experiments.compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fedsllm.cli import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    add_memory_check_arg,
    add_scenario_args,
    check_run_memory,
)


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
    parser.add_argument(
        "--rounds",
        type=int,
        help="run only the first R rounds of each policy's plan (policy.max_rounds); "
        "default: every plan runs whole",
    )
    parser.add_argument("--seed", type=int, help="scenario seed")
    parser.add_argument("--out", help="output directory (default runs/compare-<name>-<timestamp>)")
    add_memory_check_arg(parser)
    parser.set_defaults(func=compare_command)


def compare_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedsllm.cli import flag_overrides
    from fedsllm.experiments.compare import (
        compare_doc,
        load_compare_base,
        parse_policies,
        policy_scenario,
        reference_policy,
        run_policy,
        summary_lines,
        table_rows,
        write_outputs,
    )
    from fedsllm.launch import check_launch, fresh_out_dir, make_run_dir
    from fedsllm.progress import prepare_base

    policies = parse_policies(args.policies)
    # Every compared policy plans (parse_policies refuses fixed_steps), whatever the
    # scenario's own policy.name: --rounds cuts their plans.
    overrides = flag_overrides(args, policy=policies[0])
    base = load_compare_base(args.scenario, overrides, policies)
    # Build (and so validate) every policy's scenario before anything runs.
    scenarios = [policy_scenario(base, p) for p in policies]
    for scenario in scenarios:
        check_launch(scenario)  # not after the first policies have run
    reference, note = reference_policy(policies)
    check_run_memory(base, args)  # the policies run one after another: one run's worth
    out_dir = fresh_out_dir(args.out, f"compare-{base.name}")
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=max(console.width, 160))
    prepare_base(base, console)
    cut = base.policy.max_rounds
    console.print(
        f"[bold]fedsllm compare[/] scenario [cyan]{base.name}[/]: policies "
        f"{', '.join(policies)}; {base.clients.num_clients} clients, link "
        f"{base.link.backend}, compute emulated"
        + (f", only the first {cut} rounds of each plan" if cut else "")
        + f" -> {out_dir}"
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
        whole = result.num_rounds_full
        of_plan = f" of the plan's {whole}" if whole > len(result.rounds) else ""
        console.print(
            f"  done in {time.monotonic() - t0:.1f} s: {len(result.rounds)} rounds{of_plan}, "
            f"measured {result.measured_total_s:.3f} s, predicted "
            f"{result.predicted_total_s:.3f} s"
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
    for line in summary_lines(doc):
        console.print(line, markup=False, highlight=False)
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
