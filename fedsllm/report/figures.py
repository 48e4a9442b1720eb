"""The report's PNG figures: per-client timeline, measured vs predicted delay, loss vs time.

matplotlib with the Agg backend (no display), figures built on explicit
Figure objects and closed after saving, so nothing leaks between calls and
no global pyplot state is touched. Numbers come from the report dict and the
raw records; this module only draws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedsllm.telemetry.records import Phase, TelemetryRecord

TIMELINE_PNG = "report_timeline.png"
DELAY_PNG = "report_delay.png"
LOSS_PNG = "report_loss.png"

_COLORS = {
    "compute": "#4c72b0",
    "uplink": "#dd8452",
    "wait_reply": "#cccccc",
    "server": "#55a868",
    "downlink": "#c44e52",
    "adapter_upload": "#8172b3",
    "global_download": "#937860",
    "waiting": "#e6e6e6",
    "aggregation": "#da8bc3",
    "eval": "#8c8c8c",
}
_LABELS = {"waiting": "waiting (slowest client, aggregation)"}
_CLIENT_SPAN_PHASE: dict[Phase, str] = {
    Phase.CLIENT_FORWARD: "compute",
    Phase.CLIENT_BACKWARD: "compute",
    Phase.UPLINK: "uplink",
    Phase.WAIT_REPLY: "wait_reply",
    Phase.ADAPTER_UPLOAD: "adapter_upload",
    Phase.GLOBAL_DOWNLOAD: "global_download",
    # Between a client's adapter upload and the start of the next global adapter's
    # transfer: waiting for the round to close, not a download.
    Phase.WAIT_GLOBAL: "waiting",
    Phase.EVAL: "eval",
}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _timeline_rows(
    records: list[TelemetryRecord], origin: float, dil: float
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """row label -> phase -> [(start, duration)] in emulated seconds since the run start."""
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for rec in records:
        span, role = rec.phase, rec.role
        if span is None:
            continue
        if role == "client" and span in _CLIENT_SPAN_PHASE:
            row, phase = f"client {rec.client}", _CLIENT_SPAN_PHASE[span]
        elif role == "main_server" and span in (Phase.SERVER_COMPUTE, Phase.DOWNLINK):
            eval_step = rec.labels.get("mode") == "eval"
            row = "main server"
            phase = (
                "eval" if eval_step else ("server" if span is Phase.SERVER_COMPUTE else "downlink")
            )
        elif role == "fed_server" and span is Phase.AGGREGATION:
            row, phase = "fed server", "aggregation"
        else:
            continue
        start = (rec.t0 - origin) / dil
        rows.setdefault(row, {}).setdefault(phase, []).append(
            (start, max((rec.t1 - rec.t0) / dil, 0.0))
        )
    return rows


def _row_order(label: str) -> tuple[int, int]:
    if label.startswith("client "):
        return (0, int(label.split()[1]))
    return (1, 0 if label == "main server" else 1)


def timeline_figure(report: dict[str, Any], records: list[TelemetryRecord]) -> Any:
    """Gantt chart of every client's phases over the run, with round boundaries."""
    from matplotlib.patches import Patch

    dil = report["time_dilation"]
    rows = _timeline_rows(records, report["run_start_unix_s"], dil)
    labels = sorted(rows, key=_row_order)
    fig = _new_figure(11, 1.2 + 0.55 * max(len(labels), 1))
    ax = fig.add_subplot()
    used: list[str] = []
    for i, label in enumerate(labels):
        for phase, bars in rows[label].items():
            ax.broken_barh(
                bars,
                (i - 0.4, 0.8),
                facecolors=_COLORS[phase],
                linewidth=0,
                edgecolor="#999999",
                hatch="///" if phase == "waiting" else None,
            )
            if phase not in used:
                used.append(phase)
    for r in report["rounds"]:
        if r["complete"]:
            ax.axvline(r["end_s"], color="black", linewidth=0.6, linestyle=":")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("time since run start (emulated s)")
    ax.set_title("Phases per process (dotted: end of each round's aggregation)")
    fig.legend(
        handles=[
            Patch(
                facecolor=_COLORS[p],
                edgecolor="#999999",
                hatch="///" if p == "waiting" else None,
                linewidth=0,
                label=_LABELS.get(p, p),
            )
            for p in _COLORS
            if p in used
        ],
        loc="outside lower center",
        ncol=min(len(used), 5) or 1,
        fontsize="small",
        frameon=False,
    )
    return fig


def delay_figure(report: dict[str, Any]) -> Any:
    """Measured against predicted delay per round, with the model and controller views."""
    rounds = report["rounds"]
    fig = _new_figure(max(6.0, 0.45 * len(rounds) + 3), 4.2)
    ax = fig.add_subplot()
    xs = [r["round"] for r in rounds]
    width = 0.38
    ax.bar(
        [x - width / 2 for x in xs],
        [r["measured_s"] for r in rounds],
        width,
        label="measured",
        color="#4c72b0",
    )
    ax.bar(
        [x + width / 2 for x in xs],
        [r["predicted_s"] for r in rounds],
        width,
        label="predicted (measured constants)",
        color="#dd8452",
    )
    model = [(r["round"], r["model_s"]) for r in rounds if math.isfinite(r["model_s"])]
    if model:
        ax.plot(
            [m[0] for m in model],
            [m[1] for m in model],
            "k_",
            markersize=14,
            label="model (counted constants)",
        )
    ctrl = [
        (r["round"], r["controller_predicted_s"])
        for r in rounds
        if math.isfinite(r["controller_predicted_s"])
    ]
    if ctrl:
        ax.plot([c[0] for c in ctrl], [c[1] for c in ctrl], "rx", label="controller")
    for r in rounds:
        if math.isfinite(r["error_pct"]):
            top = max(r["measured_s"], r["predicted_s"])
            ax.annotate(
                f"{r['error_pct']:+.0f}%",
                (r["round"], top),
                ha="center",
                va="bottom",
                fontsize="x-small",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("round delay (emulated s)")
    ax.set_title("Measured vs predicted round delay (label: prediction error)")
    if xs:
        ax.set_xticks(xs)
    # Below everything the axes draw (the constrained layout makes room):
    # inside the axes it covered the first rounds' bars.
    fig.legend(fontsize="small", loc="outside lower center", ncol=2)
    return fig


def loss_figure(report: dict[str, Any]) -> Any:
    """Train loss of every local iteration and validation loss against emulated time."""
    fig = _new_figure(8, 4.2)
    ax = fig.add_subplot()
    train = report["losses"]["train"]
    val = report["losses"]["val"]
    if train:
        ax.plot(
            [x["t_s"] for x in train],
            [x["loss"] for x in train],
            ".",
            markersize=3,
            alpha=0.5,
            color="#4c72b0",
            label="train (per iteration)",
        )
    if val:
        ax.plot(
            [x["t_s"] for x in val],
            [x["loss"] for x in val],
            "o-",
            color="#c44e52",
            label="validation",
        )
    ax.set_xlabel("time since run start (emulated s)")
    ax.set_ylabel("loss")
    ax.set_title("Loss against time")
    if train or val:
        ax.legend(fontsize="small")
    return fig


def write_figures(
    report: dict[str, Any], records: list[TelemetryRecord], out_dir: Path
) -> list[Path]:
    """Write the three PNGs into `out_dir`; returns their paths."""
    out: list[Path] = []
    for name, fig in (
        (TIMELINE_PNG, timeline_figure(report, records)),
        (DELAY_PNG, delay_figure(report)),
        (LOSS_PNG, loss_figure(report)),
    ):
        path = Path(out_dir) / name
        fig.savefig(path, format="png")
        out.append(path)
    return out
