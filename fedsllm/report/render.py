"""The report dict (fedsllm.report.build_report) -> a readable report.md.

Plain Markdown tables, no terminal styling, so the file reads the same in a
browser, an editor or a pull request. Computing the numbers is left to
fedsllm.report; this module only formats them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fedsllm.report.phases import PHASES


def fmt(x: Any, digits: int = 3) -> str:
    """Fixed-point text of a number; "-" for a missing (None) or non-finite one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1f}%"


def _rate(bps: Any) -> str:
    """Mbit/s; an infinite or missing allocated rate is an unshaped link."""
    if bps is None or (isinstance(bps, float) and math.isinf(bps)):
        return "unshaped"
    if isinstance(bps, float) and math.isnan(bps):
        return "-"
    return f"{bps / 1e6:.3f}"


def _downlink_summary(report: dict[str, Any]) -> str:
    """One line: was the downlink paced, and at what rate."""
    used = [
        (c["downlink_paced"], c["downlink_bps"]) for r in report["rounds"] for c in r["clients"]
    ]
    paced = sorted({bps for ok, bps in used if ok})
    if not paced:
        return "unshaped, not paced"
    where = (
        ""
        if all(ok for ok, _ in used)
        else f" in {sum(ok for ok, _ in used)} of {len(used)} client-rounds"
    )
    rates = ", ".join(f"{bps / 1e6:.3f}" for bps in paced[:3]) + (", ..." if len(paced) > 3 else "")
    return f"paced at {rates} Mbit/s{where}"


def rounds_line(tot: dict[str, Any]) -> str:
    """ "1 complete of 2" and, for a run that stopped early, "of 37 planned"."""
    text = f"{tot['num_rounds_complete']} complete of {tot['num_rounds']}"
    planned = tot.get("num_rounds_planned")
    if planned is not None and planned != tot["num_rounds"]:
        text += f" started ({planned} planned)"
    return text


def round_marks(r: dict[str, Any]) -> str:
    """What a reader must know about a round before reading its numbers
    ("restarted", "incomplete", ...; empty for a plain round)."""
    marks = []
    if r.get("restarted"):
        marks.append("restarted, partial: not in totals" if r.get("partial") else "restarted")
    if not r["complete"]:
        marks.append("incomplete")
    return "; ".join(marks)


def _round_label(r: dict[str, Any]) -> str:
    """The round's number, and its marks in brackets."""
    marks = round_marks(r)
    return str(r["round"]) + (f" ({marks})" if marks else "")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table (and a blank line after it)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    tot = report["totals"]
    lines = [
        f"# FedsLLM run report: {s['name']}",
        "",
        f"- run directory: `{report['run_dir']}`",
        f"- scenario hash: `{report['scenario_hash']}`",
        f"- channels: {report.get('security', 'not recorded (roles not started by fedsllm run)')}",
        f"- clients: {s['num_clients']}, batch size {s['batch_size']}, policy `{s['policy']}`, "
        f"link backend `{s['link_backend']}`, compute emulated: {s['emulate_compute']}",
        f"- downlink (activation gradients, global adapter): {_downlink_summary(report)}",
        f"- time unit: emulated seconds (time dilation {report['time_dilation']:g} divided out)",
        f"- rounds: {rounds_line(tot)}"
        + (
            f", {tot['num_rounds_partial']} split by a restart, left out of the totals"
            if tot.get("num_rounds_partial")
            else ""
        ),
        f"- total measured {fmt(tot['measured_s'])} s, predicted {fmt(tot['predicted_s'])} s "
        f"(error {_pct(tot['error_pct'])}, mean |error| per round "
        f"{fmt(tot['mean_abs_error_pct'], 1)}%)",
        "",
        "Error = (predicted - measured) / measured: positive when the model over-predicts. "
        "*predicted* uses the bytes and FLOPs the trace recorded and the link rates in force; "
        "*model* uses the counted constants of the model (what a planner sees); *controller* "
        "is the allocation's own prediction.",
        "",
    ]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("resilience"):
        lines += ["## Faults, restarts and audit", ""]
        lines += [f"- {line.strip()}" for line in report["resilience"]["lines"]] + [""]

    lines += ["## Rounds", ""]
    rows = []
    for r in report["rounds"]:
        rows.append(
            [
                _round_label(r),
                fmt(r["measured_s"]),
                fmt(r["predicted_s"]),
                _pct(r["error_pct"]),
                fmt(r["model_s"]),
                _pct(r["model_error_pct"]),
                fmt(r["controller_predicted_s"]),
                fmt(r["window_s"]),
                fmt(r["eval_s"]),
                str(r["num_overruns"]),
                fmt(r["train_loss"], 4),
                fmt(r["val_loss"], 4),
            ]
        )
    lines += markdown_table(
        [
            "round",
            "measured s",
            "predicted s",
            "error",
            "model s",
            "model error",
            "controller s",
            "window s",
            "eval s",
            "overruns",
            "train loss",
            "val loss",
        ],
        rows,
    )

    lines += ["## Phases per client (measured / predicted, s)", ""]
    rows = []
    for r in report["rounds"]:
        for c in r["clients"]:
            m, p = c["measured"]["phases_s"], c["predicted"]["phases_s"]
            rows.append(
                [
                    str(r["round"]),
                    str(c["client"]),
                    f"{c['num_steps']}"
                    + (f"/{c['allocated_steps']}" if c["allocated_steps"] else ""),
                ]
                + [f"{fmt(m[ph])} / {fmt(p[ph])}" for ph in PHASES]
                + [f"{fmt(c['measured']['total_s'])} / {fmt(c['predicted']['total_s'])}"]
            )
    lines += markdown_table(["round", "client", "steps"] + list(PHASES) + ["total"], rows)

    lines += [
        "## Link rates per client (Mbit/s, allocated vs achieved)",
        "",
        "*downlink paced at*: the rate the main server paced the client's gradients at "
        "(unshaped: not paced, so *downlink achieved* is the local transport's speed).",
        "",
    ]
    rows = []
    for r in report["rounds"]:
        for c in r["clients"]:
            rates = c["rates"] or {}
            m = c["measured"]
            rows.append(
                [
                    str(r["round"]),
                    str(c["client"]),
                    str(rates.get("source", "-")),
                    str(rates.get("version", -1)),
                    _rate(rates.get("uplink_bps")),
                    _rate(m["achieved_uplink_bps"]),
                    _rate(c["downlink_bps"]),
                    _rate(m["achieved_downlink_bps"]),
                    str(m["uplink_bytes"]),
                    str(m["downlink_bytes"]),
                    str(m["adapter_bytes"]),
                ]
            )
    lines += markdown_table(
        [
            "round",
            "client",
            "source",
            "version",
            "uplink alloc",
            "uplink achieved",
            "downlink paced at",
            "downlink achieved",
            "uplink bytes",
            "downlink bytes",
            "adapter bytes",
        ],
        rows,
    )
    if report["link_stats"]:
        lines += ["Whole-run link statistics from the shapers:", ""]
        rows = [
            [
                str(x.get("client")),
                str(x.get("direction")),
                str(x.get("num_bytes")),
                str(x.get("shaped_bytes")),
                fmt(x.get("busy_s")),
                _rate(x.get("achieved_bps")),
            ]
            for x in report["link_stats"]
        ]
        lines += markdown_table(
            ["client", "direction", "bytes", "shaped bytes", "busy s", "achieved Mbit/s"], rows
        )

    lines += ["## Device emulation", ""]
    rows = []
    for r in report["rounds"]:
        for c in r["clients"]:
            m = c["measured"]
            rows.append(
                [
                    str(r["round"]),
                    str(c["client"]),
                    fmt(m["client_target_s"]),
                    fmt(m["server_target_s"]),
                    str(m["num_overruns"]),
                    fmt(m["client_overrun_s"]),
                    fmt(m["server_overrun_s"]),
                ]
            )
    lines += markdown_table(
        [
            "round",
            "client",
            "client target s",
            "server target s",
            "overruns",
            "client overrun s",
            "server overrun s",
        ],
        rows,
    )
    if report["device_summaries"]:
        rows = [
            [
                str(d.get("role")),
                str(d.get("client")),
                str(d.get("num_steps")),
                str(d.get("num_overruns")),
                fmt(d.get("target_s")),
                fmt(d.get("compute_s")),
                fmt(d.get("overrun_s")),
            ]
            for d in report["device_summaries"]
        ]
        lines += ["Whole-run device summaries (including evaluation steps):", ""]
        lines += markdown_table(
            ["role", "client", "steps", "overruns", "target s", "compute s", "overrun s"], rows
        )

    if report["counts"]:
        c = report["counts"]
        lines += [
            "## Counted constants",
            "",
            f"- phi_c = {c['phi_c_flops']:.4g} FLOP/sample, phi_s = {c['phi_s_flops']:.4g} "
            "FLOP/sample",
            f"- smashed data per batch {c['smashed_bytes_per_batch']} B, gradients per batch "
            f"{c['gradient_bytes_per_batch']} B, client adapter {c['client_adapter_bytes']} B",
            "",
        ]
    if report["eval_spans"]:
        lines += ["## Evaluation (not part of the protocol)", ""]
        rows = [
            [str(e["round"]), str(e["client"]), fmt(e["start_s"]), fmt(e["duration_s"])]
            for e in report["eval_spans"]
        ]
        lines += markdown_table(["after round", "client", "start s", "duration s"], rows)
    losses = report["losses"]
    lines += [
        "## Loss",
        "",
        f"- validation loss before training {fmt(losses['initial_val_loss'], 4)}, "
        f"after the last round {fmt(losses['final_val_loss'], 4)}",
        "",
    ]
    if report["figures"]:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in report["figures"]] + [""]
    lines += [
        "## Scenario",
        "",
        "```json",
        json.dumps(report["scenario"], indent=1, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)
