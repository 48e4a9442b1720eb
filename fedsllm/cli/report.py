"""`fedsllm report RUN_DIR`: measured against predicted delay of a run, as files and a summary.

Argument parsing and the printed summary only; the work is
`fedsllm.report.write_report`, imported when the command runs so that
`fedsllm --help` stays fast. A missing or incomplete run directory is a
ConfigError (exit 2) naming what is missing.
"""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="measured vs predicted delay, phases, link rates and losses of a run",
        description=(
            "Read RUN_DIR/scenario.json and RUN_DIR/trace/*.jsonl and write RUN_DIR/report.md, "
            "RUN_DIR/report.json and RUN_DIR/report_{timeline,delay,loss}.png. Durations are "
            "emulated seconds (link.time_dilation divided out)."
        ),
    )
    parser.add_argument("run_dir", help="run directory written by `fedsllm run`")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="what to print: a per-round table (text, default) or the paths and totals (json)",
    )
    parser.set_defaults(func=_report)


def _num(x: float | None, fmt: str) -> str:
    """report.json writes non-finite numbers as null."""
    return format(x, fmt) if x is not None and math.isfinite(x) else "-"


def _report(args: argparse.Namespace) -> int:
    from fedsllm.report import write_report
    from fedsllm.report.render import round_marks, rounds_line

    result = write_report(args.run_dir)
    doc = json.loads(result.report_json.read_text(encoding="utf-8"))
    if args.format == "json":
        print(
            json.dumps(
                {
                    "report_md": str(result.report_md),
                    "report_json": str(result.report_json),
                    "figures": [str(p) for p in result.figures],
                    "totals": doc["totals"],
                    "audit": doc.get("resilience", {}).get("audit"),
                }
            )
        )
        return 0
    tot = doc["totals"]
    print(f"rounds: {rounds_line(tot)}")
    print(f"{'round':>5} {'measured s':>11} {'predicted s':>12} {'error':>8}")
    for r in doc["rounds"]:
        marks = round_marks(r)  # as report.md marks them
        print(
            f"{r['round']:>5} {_num(r['measured_s'], '>11.3f')} "
            f"{_num(r['predicted_s'], '>12.3f')} {_num(r['error_pct'], '>+7.1f')}%"
            + (f"  ({marks})" if marks else "")
        )
    for line in doc.get("resilience", {}).get("lines", []):
        print(line)
    print(f"report: {result.report_md}")
    return 0
