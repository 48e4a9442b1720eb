"""Run one scenario under several allocation policies and compare measured with predicted delay.

Every policy runs the same scenario (same seeds, data and channels; only
policy.name differs) as a real emulated run, one after another, each in
OUT/<policy>/. The comparison is the paper's headline figure made testable:
the delay reduction of each policy against the unoptimized case ("equal":
equal shares, fixed eta), measured on the emulated system beside the one the
delay model predicts (the controller's plan, integer n and N). Measuring a
run is fedsllm.report's job alone (its per-round measured_s: the round window
of fedsllm.report.phases, start-up skew and evaluation cut out). The
arithmetic (`compare_rows`, `time_to_target`) is pure and works on
`PolicyResult`s; the CLI (fedsllm.cli.compare) prints and writes the files.

A comparison may be cut short (policy.max_rounds, `compare --rounds`): every
policy then runs only the first R rounds of its plan. Plans differ in how
they split the work (one with fewer local steps per round needs more rounds),
so the reduction between cut plans is not the reduction between the plans;
the rows say which plans were cut and carry each whole plan's predicted
delay beside the measured one.

One sign convention everywhere (`reduction_pct`, `reduction_text`): a
positive reduction is less delay than the reference, written "x% less".
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsllm.config import POLICIES, ScenarioConfig
from fedsllm.errors import ConfigError
from fedsllm.telemetry.records import EventKind, TelemetryRecord

REDUCTION_DEFINITION = (
    "Reduction = (reference delay - policy delay) / reference delay: positive means less "
    "delay than the reference, written 'x% less', negative 'x% more'."
)
"""The sign convention of every reduction in the table, the figure and the text."""
REFERENCE_POLICY = "equal"
"""The unoptimized case of docs/MODEL.md section 5: equal shares, eta fixed (0.5)."""
COMPARE_FORMAT = "fedsllm.compare/1"
MEASURED_FROM_REPORT = "report"
"""measured_s of fedsllm.report: round window minus evaluation, round 0 opening when the
last client starts it."""


# ---------------------------------------------------------------- inputs


def parse_policies(text: str) -> tuple[str, ...]:
    """'optimal,equal' -> ('optimal', 'equal'); ConfigError naming --policies and the value."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names:
        raise ConfigError("--policies", text, "must list at least one policy")
    out: list[str] = []
    for name in names:
        if name not in POLICIES:
            raise ConfigError("--policies", name, f"unknown policy (known: {', '.join(POLICIES)})")
        if name == "fixed_steps":
            raise ConfigError(
                "--policies",
                name,
                "has no allocation plan to compare (it runs without a controller)",
            )
        if name in out:
            raise ConfigError("--policies", name, "is listed twice")
        out.append(name)
    return tuple(out)


def compare_base_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The scenario dict every compared run starts from (before the policy is set).

    Links are shaped by the token backend unless the scenario names a backend
    itself, and compute is always padded to the emulated device speeds: an
    unshaped, host-speed run measures the host, not the allocation. A
    target validation loss needs a loss after every round, so evaluation
    runs every round then.
    """
    import copy

    out = copy.deepcopy(data)
    link = out.setdefault("link", {})
    link.setdefault("backend", "token")
    link["emulate_compute"] = True
    training = out.setdefault("training", {})
    target = training.get("target_val_loss", 0.0)
    if isinstance(target, int | float) and not isinstance(target, bool) and target > 0:
        training["eval_every"] = 1
    return out


def load_compare_base(
    path: str | Path | None, overrides: list[str], policies: Sequence[str]
) -> ScenarioConfig:
    """The validated base scenario of a comparison (`compare_base_dict` of the file with
    `overrides`), refusing overrides that the compared policies ignore.

    The compared policies replace the scenario's own policy.name, so
    applicability is checked against them, not against the file's (or an
    override's) policy.name.
    """
    from fedsllm.config import (
        apply_overrides,
        check_overrides_apply,
        check_parameters_read,
        from_dict,
        load_dict,
    )

    base = from_dict(compare_base_dict(apply_overrides(load_dict(path), overrides)))
    for policy in policies:
        check_overrides_apply(overrides, policy)
    check_parameters_read(overrides, policies)
    return base


def policy_scenario(base: ScenarioConfig, policy: str) -> ScenarioConfig:
    """`base` with only policy.name changed."""
    return dataclasses.replace(base, policy=dataclasses.replace(base.policy, name=policy))


def reference_policy(policies: Sequence[str]) -> tuple[str, str]:
    """(reference, note): "equal" when compared, else the first policy, which the note says."""
    if REFERENCE_POLICY in policies:
        return REFERENCE_POLICY, (
            "Reductions are against policy equal (equal shares, fixed eta): the unoptimized case."
        )
    return policies[0], (
        f"Policy equal (the unoptimized case) was not compared: reductions are against the "
        f"first policy, {policies[0]}."
    )


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class RoundMeasure:
    """One round of a run, in emulated seconds."""

    round: int
    measured_s: float
    """Round delay without evaluation."""
    val_loss: float
    """Validation loss after the round (NaN when not evaluated)."""
    start_s: float = math.nan
    """Window start, seconds since the run's first record."""
    end_s: float = math.nan
    """Window end (end of the round's aggregation)."""


@dataclass
class PolicyResult:
    """What one policy's run gave; NaN where the run did not produce it."""

    policy: str
    run_dir: str = ""
    ok: bool = True
    failed_process: str = ""
    failed_reason: str = ""
    measured_source: str = ""
    rounds: list[RoundMeasure] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)
    """The fed server's "plan" event: eta, num_local_steps, num_rounds,
    predicted_round_s, predicted_total_s (num_rounds and the total are of the rounds
    that run: policy.max_rounds may have cut the plan)."""
    num_rounds_full: int = 0
    """Rounds of the whole plan before policy.max_rounds cut it (`full_plan_rounds`);
    0 = not known, taken as the plan's num_rounds."""
    startup_skew_s: float = 0.0
    """Clients' start-up skew left out of round 0 (fedsllm.report.phases)."""
    report_predicted_s: float = math.nan
    """fedsllm.report's prediction for what actually ran (NaN without the report)."""
    eval_s: float = math.nan
    initial_val_loss: float = math.nan
    final_val_loss: float = math.nan

    @property
    def measured_total_s(self) -> float:
        if not self.ok or not self.rounds:
            return math.nan
        return float(sum(r.measured_s for r in self.rounds))

    @property
    def predicted_total_s(self) -> float:
        return float(self.plan.get("predicted_total_s", math.nan))


def plan_from_records(records: list[TelemetryRecord]) -> dict[str, Any]:
    """The fed server's plan event's attributes (empty without a controller)."""
    for rec in records:
        if rec.event is EventKind.PLAN:
            return rec.extra()
    return {}


def full_plan_rounds(plan: dict[str, Any], convergence_a: float, max_rounds: int) -> int:
    """Rounds N of the whole plan, before policy.max_rounds cut it (0 without a plan).

    The plan event carries the rounds that run. A cut plan keeps its eta (the
    controller only stops early), so its whole N is the controller's
    N(eta) = a / (1 - eta) rounded up (docs/MODEL.md section 4).
    """
    from fedsllm.delay.rates import global_rounds, round_up

    num_run = int(plan.get("num_rounds", 0))
    eta = plan.get("eta")
    if not num_run or max_rounds <= 0 or num_run < max_rounds or eta is None:
        return num_run
    return max(num_run, round_up(global_rounds(float(eta), convergence_a)))


def rounds_from_report(report: dict[str, Any]) -> list[RoundMeasure]:
    """Per-round measured delay from a report.json dict (complete rounds only)."""

    return [
        RoundMeasure(
            round=int(r["round"]),
            measured_s=_num(r["measured_s"]),
            val_loss=_num(r.get("val_loss")),
            start_s=_num(r.get("start_s")),
            end_s=_num(r.get("end_s")),
        )
        for r in report.get("rounds", [])
        if r.get("complete", True)
    ]


def _num(x: Any) -> float:
    """A report number: null (not available) is NaN."""
    return math.nan if x is None else float(x)


# ---------------------------------------------------------------- arithmetic


def reduction_pct(reference_s: float, value_s: float) -> float:
    """(reference - value) / reference * 100: positive when `value` is faster."""
    if not (math.isfinite(reference_s) and math.isfinite(value_s)) or reference_s <= 0:
        return math.nan
    return (reference_s - value_s) / reference_s * 100.0


def reduction_text(pct: float | None, reference: str | None = None) -> str:
    """A reduction in words: "23.3% less" (or "... delay than equal" given the reference).

    The one rendering of `reduction_pct` for the table, the figure and the text,
    so that no reader has to guess what a sign means.
    """
    if pct is None or not math.isfinite(pct):
        return "-"
    text = f"{abs(pct):.1f}% {'less' if pct >= 0 else 'more'}"
    return text if reference is None else f"{text} delay than {reference}"


def time_to_target(rounds: Sequence[RoundMeasure], target_loss: float) -> dict[str, float]:
    """Delay until the end of the first round whose val_loss <= target.

    `delay_s` sums the measured (evaluation-free) round delays through that
    round; `wall_s` is the wall time from the start of round 0 to the end of
    that round, evaluations included. NaN (and round -1) when the target is
    off (<= 0) or never reached.
    """
    nan = {"round": -1, "delay_s": math.nan, "wall_s": math.nan}
    if not target_loss > 0:
        return nan
    ordered = sorted(rounds, key=lambda r: r.round)
    total = 0.0
    for r in ordered:
        total += r.measured_s
        if math.isfinite(r.val_loss) and r.val_loss <= target_loss:
            wall = r.end_s - ordered[0].start_s
            return {"round": r.round, "delay_s": total, "wall_s": wall}
    return nan


def compare_rows(
    results: Sequence[PolicyResult], reference: str, target_loss: float = 0.0
) -> list[dict[str, Any]]:
    """One row per policy: totals, reductions against `reference`, and their gap.

    measured_reduction_pct and predicted_reduction_pct are each policy's
    saving against the reference's total (measured against measured,
    predicted against predicted); diff_pp = measured - predicted, in
    percentage points. When policy.max_rounds cut a plan, those cover the rounds
    that ran, `truncated` is set, and full_predicted_total_s and
    full_predicted_reduction_pct are the whole plans' (what the policies would
    save over a whole training).
    """
    from fedsllm.report.predict import error_pct

    ref = next((r for r in results if r.policy == reference), None)
    ref_meas = ref.measured_total_s if ref is not None else math.nan
    ref_pred = ref.predicted_total_s if ref is not None else math.nan
    ref_full = _full_predicted_s(ref) if ref is not None else math.nan
    rows = []
    for res in results:
        meas, pred = res.measured_total_s, res.predicted_total_s
        red_m, red_p = reduction_pct(ref_meas, meas), reduction_pct(ref_pred, pred)
        num_run = int(res.plan.get("num_rounds", 0))
        num_full = res.num_rounds_full or num_run
        full = _full_predicted_s(res)
        ttt = time_to_target(res.rounds, target_loss)
        rows.append(
            {
                "policy": res.policy,
                "reference": res.policy == reference,
                "ok": res.ok,
                "run_dir": res.run_dir,
                "eta": float(res.plan.get("eta", math.nan)),
                "num_local_steps": int(res.plan.get("num_local_steps", 0)),
                "num_rounds_planned": num_run,
                "num_rounds_full": num_full,
                "truncated": num_full > num_run,
                "num_rounds_measured": len(res.rounds),
                "predicted_round_s": float(res.plan.get("predicted_round_s", math.nan)),
                "predicted_total_s": pred,
                "measured_total_s": meas,
                "measured_source": res.measured_source,
                "report_predicted_s": res.report_predicted_s,
                "model_error_pct": error_pct(meas, pred),
                "measured_reduction_pct": red_m,
                "predicted_reduction_pct": red_p,
                "diff_pp": red_m - red_p,
                "full_predicted_total_s": full,
                "full_predicted_reduction_pct": reduction_pct(ref_full, full),
                "eval_s": res.eval_s,
                "startup_skew_s": res.startup_skew_s,
                "initial_val_loss": res.initial_val_loss,
                "final_val_loss": res.final_val_loss,
                "target_round": int(ttt["round"]),
                "time_to_target_s": ttt["delay_s"],
                "time_to_target_wall_s": ttt["wall_s"],
                "failed_process": res.failed_process,
                "failed_reason": res.failed_reason,
            }
        )
    return rows


def _full_predicted_s(res: PolicyResult) -> float:
    """The whole plan's predicted delay: its N rounds x the plan's round delay."""
    num_run = int(res.plan.get("num_rounds", 0))
    num_full = res.num_rounds_full or num_run
    if num_full == num_run:
        return res.predicted_total_s
    return num_full * float(res.plan.get("predicted_round_s", math.nan))


# ---------------------------------------------------------------- running


def measure_run(run_dir: Path, scenario: ScenarioConfig, scenario_hash: str = "") -> PolicyResult:
    """Read a finished run once: the plan, per-round measured delays (fedsllm.report's
    measured_s, complete rounds only), losses; report.md/.json and figures are written
    into the run directory."""
    from fedsllm.launch import scenario_hash as hash_of
    from fedsllm.report import report_from_records, write_report_files
    from fedsllm.summary import final_val_loss, initial_val_loss, val_losses
    from fedsllm.trace import read_telemetry

    records = read_telemetry(run_dir / "trace")
    report = report_from_records(run_dir, scenario, scenario_hash or hash_of(scenario), records)
    write_report_files(run_dir, report, records)
    res = PolicyResult(policy=scenario.policy.name, run_dir=str(run_dir.resolve()))
    res.plan = plan_from_records(records)
    res.num_rounds_full = full_plan_rounds(
        res.plan, scenario.convergence.a, scenario.policy.max_rounds
    )
    val = val_losses(records)
    res.initial_val_loss = initial_val_loss(val)
    res.final_val_loss = final_val_loss(val)
    res.startup_skew_s = float(report["startup_skew_s"])
    res.measured_source = MEASURED_FROM_REPORT
    totals = report["totals"]
    res.report_predicted_s = _num(totals.get("predicted_s"))
    res.eval_s = _num(totals.get("eval_s"))
    # Losses come from the trace (the report drops rounds without spans).
    res.rounds = [
        dataclasses.replace(r, val_loss=val.get(r.round, math.nan))
        for r in rounds_from_report(report)
    ]
    return res


def run_policy(
    scenario: ScenarioConfig, run_dir: Path, on_tick: Callable[[], None] | None = None
) -> PolicyResult:
    """One real run (fedsllm.launch) of `scenario` in `run_dir`, measured."""
    from fedsllm.launch import run_processes
    from fedsllm.summary import write_summary
    from fedsllm.trace import read_telemetry

    outcome = run_processes(scenario, run_dir, on_tick=on_tick)
    write_summary(
        run_dir,
        outcome,
        read_telemetry(run_dir / "trace"),
        scenario_name=scenario.name,
        time_dilation=scenario.link.time_dilation,
    )
    failed = outcome.failed
    if failed is not None:
        return PolicyResult(
            policy=scenario.policy.name,
            run_dir=str(run_dir),
            ok=False,
            failed_process=failed.proc.name,
            failed_reason=f"{failed.reason}; log {failed.proc.log_path}",
        )
    return measure_run(run_dir, scenario)


# ---------------------------------------------------------------- outputs


def compare_doc(
    base: ScenarioConfig,
    results: Sequence[PolicyResult],
    reference: str,
    reference_note: str,
) -> dict[str, Any]:
    """Everything OUT/compare.json holds (NaN written as null)."""
    target = base.training.target_val_loss
    rows = compare_rows(results, reference, target)
    sources = sorted({r.measured_source for r in results if r.measured_source})
    notes = [reference_note, REDUCTION_DEFINITION]
    if MEASURED_FROM_REPORT in sources:
        notes.append(
            "Measured total = sum of fedsllm.report's per-round measured_s (round window "
            "minus evaluation time), emulated seconds; round 0 opens when the last client "
            "starts it (start-up skew, startup_skew_s, cut out)."
        )
    notes.append(
        "Predicted total = the controller plan's predicted_total_s: N rounds x the round "
        "delay with integer n local iterations, at round 0's channels."
    )
    cut = [r for r in rows if r["truncated"]]
    if cut:
        notes.append(
            f"Cut short by policy.max_rounds={base.policy.max_rounds} (--rounds): "
            + ", ".join(f"{r['policy']} {truncation_text(r)}" for r in cut)
            + ". Measured and predicted totals cover only the rounds that ran; a plan with "
            "fewer local steps per round needs more rounds, so the reduction between cut "
            "plans is not the reduction between the plans. The full-plan columns give each "
            "whole plan's predicted delay and its reduction against the reference's whole plan."
        )
    if target > 0:
        notes.append(
            f"Time to target = summed measured round delays from round 0 through the first "
            f"round with val loss <= {target:g} (evaluated every round); the wall-clock "
            "figure includes evaluation."
        )
    from fedsllm.summary import json_clean

    return json_clean(
        {
            "format": COMPARE_FORMAT,
            "reference": reference,
            "measured_source": ",".join(sources),
            "target_val_loss": target,
            "truncated": bool(cut),
            "settings": {
                "link_backend": base.link.backend,
                "emulate_compute": base.link.emulate_compute,
                "num_clients": base.clients.num_clients,
                "seed": base.seed,
                "time_dilation": base.link.time_dilation,
                "max_rounds": base.policy.max_rounds,
            },
            "policies": rows,
            "rounds": {r.policy: [dataclasses.asdict(x) for x in r.rounds] for r in results},
            "notes": notes,
            "scenario": base.to_dict(),
        }
    )


def truncation_text(row: dict[str, Any]) -> str:
    """'truncated: 2 of 37 rounds' for a cut plan, 'all 5 rounds' for a whole one."""
    num_run, num_full = row["num_rounds_planned"], row["num_rounds_full"]
    if row["truncated"]:
        return f"truncated: {num_run} of {num_full} rounds"
    return f"all {num_run} rounds"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """One sentence per compared policy, e.g. 'optimal: measured 23.3% less delay than
    equal (predicted 25.0% less)', plus the whole plans' prediction when cut short."""
    ref = doc["reference"]
    out = []
    for p in doc["policies"]:
        if p["reference"] or not p["ok"]:
            continue
        line = (
            f"{p['policy']}: measured {reduction_text(p['measured_reduction_pct'], ref)} "
            f"(predicted {reduction_text(p['predicted_reduction_pct'])})"
        )
        if doc.get("truncated"):
            line += (
                f" over the rounds that ran ({truncation_text(p)}); whole plan predicted "
                f"{reduction_text(p['full_predicted_reduction_pct'], ref)}"
            )
        out.append(line)
    return out


def _pp(x: Any, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1f}" if sign else f"{x:.1f}"


TABLE_COLUMNS = (
    "policy",
    "eta",
    "n x rounds run",
    "measured s",
    "predicted s",
    "measured vs ref",
    "predicted vs ref",
    "diff pp",
)
TRUNCATION_COLUMNS = ("rounds", "full plan pred. s", "full plan pred. vs ref")
"""Added when policy.max_rounds cut a plan: the cut, and the whole plan's prediction."""


def table_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table (shared by the terminal and compare.md).

    Reductions read "x% less" / "x% more" (`reduction_text`); diff pp is signed,
    measured minus predicted reduction.
    """
    from fedsllm.report.render import fmt

    target = doc["target_val_loss"] or 0.0
    truncated = bool(doc.get("truncated"))
    header = list(TABLE_COLUMNS)
    if truncated:
        header += TRUNCATION_COLUMNS
    if target > 0:
        header += ["rounds to target", "time to target s"]
    rows = []
    for p in doc["policies"]:
        name = p["policy"] + (" (ref)" if p["reference"] else "")
        if not p["ok"]:
            name += f" FAILED ({p['failed_process']})"

        def versus(pct: Any, row: dict[str, Any] = p) -> str:
            return "ref" if row["reference"] and row["ok"] else reduction_text(pct)

        cells = [
            name,
            fmt(p["eta"], 3),
            f"{p['num_local_steps']} x {p['num_rounds_planned']}",
            fmt(p["measured_total_s"]),
            fmt(p["predicted_total_s"]),
            versus(p["measured_reduction_pct"]),
            versus(p["predicted_reduction_pct"]),
            _pp(p["diff_pp"]),
        ]
        if truncated:
            cells += [
                truncation_text(p).removesuffix(" rounds"),
                fmt(p["full_predicted_total_s"]),
                versus(p["full_predicted_reduction_pct"]),
            ]
        if target > 0:
            reached = p["target_round"] >= 0
            cells += [
                str(p["target_round"] + 1) if reached else "not reached",
                fmt(p["time_to_target_s"]) if reached else "-",
            ]
        rows.append(cells)
    return header, rows


def render_markdown(doc: dict[str, Any]) -> str:
    from fedsllm.report.render import markdown_table

    header, rows = table_rows(doc)
    s = doc["settings"]
    lines = [
        "# FedsLLM policy comparison",
        "",
        f"- clients: {s['num_clients']}, seed {s['seed']}, link backend `{s['link_backend']}`, "
        f"compute emulated: {s['emulate_compute']}",
        f"- reference: `{doc['reference']}`; measured from: {doc['measured_source'] or '-'}",
        "- diff pp = measured reduction - predicted reduction (percentage points); "
        "reductions as defined in the notes",
        "",
        *markdown_table(header, rows),
    ]
    summary = summary_lines(doc)
    if summary:
        lines += [f"- {line}" for line in summary] + [""]
    lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += ["", "## Runs", ""]
    for p in doc["policies"]:
        lines.append(f"- `{p['policy']}`: `{p['run_dir']}`")
    lines += ["", "![measured vs predicted total delay](compare.png)", ""]
    return "\n".join(lines)


def figure_labels(doc: dict[str, Any]) -> list[str]:
    """The annotation over each policy's bars: its measured reduction in words ("" for
    the reference and failed runs), and the whole plan's predicted one when cut short."""
    ref = doc["reference"]
    out = []
    for p in doc["policies"]:
        if p["reference"] or not p["ok"]:
            out.append("")
            continue
        label = f"measured {reduction_text(p['measured_reduction_pct'], ref)}"
        if doc.get("truncated"):
            label += f"\nwhole plan predicted {reduction_text(p['full_predicted_reduction_pct'])}"
        out.append(label)
    return out


def build_figure(doc: dict[str, Any]) -> Any:
    """Measured vs predicted total delay bars, policies side by side (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    policies = doc["policies"]
    names = [p["policy"] for p in policies]
    measured = [_num(p["measured_total_s"]) for p in policies]
    predicted = [_num(p["predicted_total_s"]) for p in policies]
    fig = Figure(figsize=(max(5.0, 1.9 * len(names) + 2), 4.4), dpi=100)
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], measured, width, label="measured", color="#4c72b0")
    ax.bar([x + width / 2 for x in xs], predicted, width, label="predicted", color="#dd8452")
    for x, label, meas, pred in zip(xs, figure_labels(doc), measured, predicted, strict=True):
        if label:
            top = max([v for v in (meas, pred) if math.isfinite(v)] or [0.0])
            ax.annotate(label, (x, top), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(names)
    ax.set_ylabel("total training delay (emulated s)")
    title = f"Measured vs predicted total delay (reference: {doc['reference']})"
    if doc.get("truncated"):
        title += f"\nfirst {doc['settings']['max_rounds']} rounds of each plan"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize="small")
    ax.margins(y=0.2)  # room for the labels over the bars
    fig.tight_layout()
    return fig


def write_figure(doc: dict[str, Any], path: Path) -> Path:
    """`build_figure` saved as PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    build_figure(doc).savefig(path)
    return path


def write_outputs(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    """OUT/compare.json, compare.md and compare.png."""
    json_path = out_dir / "compare.json"
    md_path = out_dir / "compare.md"
    png_path = out_dir / "compare.png"
    json_path.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8")
    md_path.write_text(render_markdown(doc), encoding="utf-8")
    write_figure(doc, png_path)
    return json_path, md_path, png_path
