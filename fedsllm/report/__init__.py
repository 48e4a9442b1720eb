"""A finished (or partial) run directory -> report.md, report.json and PNG figures.

`write_report(run_dir)` is what `fedsllm report` and the end of `fedsllm run`
call. It reads RUN_DIR/scenario.json and RUN_DIR/trace/*.jsonl, measures
every round (fedsllm.report.phases), predicts it with the delay model for the
allocation and constants actually used (fedsllm.report.predict), and writes
the files; rendering is fedsllm.report.render's, plotting
fedsllm.report.figures'.

All durations are emulated seconds: wall-clock durations divided by
scenario.link.time_dilation. Times "t_s"/"start_s"/"end_s" are offsets from
the run's first span, also in emulated seconds.

report.json fields (non-finite numbers are written as null: "not available",
and for a link rate "unshaped", i.e. infinite):
    format                 "fedsllm.report/1"
    run_dir                the run directory
    scenario_hash          hash of the scenario that ran
    scenario               ScenarioConfig.to_dict() of what ran
    time_dilation          link.time_dilation that was divided out
    run_start_unix_s       wall-clock origin of every *_s offset
    startup_skew_s         clients' start-up skew left out of round 0's window, and of each
                           window that opens again after a restart (emulated s)
    settings               policy, link_backend, emulate_compute, num_clients, batch_size,
                           aggregation_s (t_agg), propagation_delay_s, downlink_bps
                           (channel.downlink_bps; 0 = unshaped)
    counts                 the model's counted constants: phi_c_flops, phi_s_flops
                           (per sample), smashed_bytes_per_batch, gradient_bytes_per_batch,
                           client_adapter_bytes; null when the model could not be counted
    rounds[]               one per round that left protocol spans:
        round, complete    complete = the round has an aggregation span
        start_s, end_s     the window (see fedsllm.report.phases)
        window_s           end_s - start_s
        eval_s             eval time inside the window (cut out)
        measured_s         window_s - eval_s: the measured round delay
        predicted_s        the model with the measured bytes / FLOPs and rates in force
        model_s            the model with counted constants (DelayInputs); null when not counted
        controller_predicted_s  the allocation's own prediction (null without a controller)
        error_pct          (predicted_s - measured_s) / measured_s * 100
        model_error_pct    the same for model_s
        aggregation_s      the fed server's aggregation span
        startup_skew_s     start-up skew left out of this round's window (round 0, or after a
                           restart)
        restarted          a process of the run started again inside the round (fedsllm run
                           --resume, or the supervisor restarting a role): the round's work
                           it did before is cut out and the window opens again when the last
                           client starts, as round 0's does (fedsllm.report.phases)
        restart_cut_s      what that left out of the window: the round's lost work, the
                           downtime between launches, start-up (emulated s)
        partial            restarted, and the window does not hold the whole round (work
                           done only before a restart, or a restart while clients trained):
                           left out of the totals
        train_loss         mean train loss of the round's local iterations (a step run
                           again after a restart counts once, its last run)
        val_loss           validation loss after the round (null when not evaluated)
        num_overruns, overrun_s   device-emulation overruns of the round (client + server)
        clients[]:
            client, num_steps (executed), allocated_steps (0 = not allocated)
            measured       phases_s {compute, uplink, server, downlink, adapter_upload,
                           global_download (the transfer only), aggregation, waiting
                           (the wait for the slowest client and the round's close, and
                           the rest of the window)}, total_s, wait_reply_s,
                           eval_s, bytes (uplink_bytes, downlink_bytes, adapter_bytes,
                           global_bytes), message counts, device sums (client_target_s,
                           server_target_s, flops), overruns, finish_s,
                           uplink_transfer_s, downlink_transfer_s (whole transfer spans),
                           achieved_uplink_bps, achieved_downlink_bps (bytes over those),
                           downlink_paced_bps (what the steps asked; null: not recorded)
            predicted      phases_s (same keys; waiting = 0), propagation_s, total_s,
                           compute_source ("model" or "measured")
            model_s        counted-constants round_k
            downlink_bps   the rate gradients were paced at (as the client's steps
                           recorded it, else the rate in force); null = not paced
            downlink_paced whether they were paced (false: unshaped downlink)
            rates          uplink_bps, downlink_bps (allocated / in force; null = unshaped),
                           source, version, bandwidth_hz, share, num_local_steps,
                           predicted_round_s, num_versions
    totals                 measured_s, predicted_s, model_s (sums over complete rounds that
                           are not partial), error_pct, mean_abs_error_pct and
                           num_rounds_in_mean (over those rounds, with a finite error),
                           eval_s, num_overruns, overrun_s, num_rounds (with records),
                           num_rounds_planned (the plan's; null if unknown), num_rounds_complete,
                           num_rounds_partial (complete but partial: left out of the sums)
    link_stats[]           per client and direction from the shapers: num_bytes,
                           num_chunks, busy_s, shaped_bytes, achieved_bps
    device_summaries[]     role, client and DeviceSummary fields of every paced process
    losses                 train[] {t_s, round, client, step, loss}, val[] {t_s, round, loss},
                           initial_val_loss, final_val_loss
    eval_spans[]           client, round, start_s, duration_s (validation, not protocol)
    figures[]              file names of the PNGs next to report.md
    resilience             launches[] (RUN_DIR/faults.json: each launch, first and resumed,
                           with its restart policy, faults, fault actions and restarts,
                           completed, rounds_done), resumed (count), audit (the recomputed
                           FedAvg against the produced adapter, fedsllm.state.audit), lines
    notes[]                what a reader must know to read the numbers right
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError
from fedsllm.telemetry.records import EventKind, Phase, TelemetryRecord

log = logging.getLogger(__name__)

REPORT_FORMAT = "fedsllm.report/1"


@dataclass(frozen=True)
class ReportResult:
    """Where the report went, and its headline numbers."""

    run_dir: Path
    report_md: Path
    report_json: Path
    figures: tuple[Path, ...]
    num_rounds: int
    mean_abs_error_pct: float
    """Mean |error| of predicted against measured over complete rounds, partial ones left
    out (NaN if none)."""
    num_rounds_in_mean: int = 0
    """How many rounds that mean is over (complete, not partial, finite error)."""
    measured_s: float = math.nan
    """The totals' measured delay (emulated s)."""
    overrun_s: float = 0.0
    """Device-emulation overruns over the run, clients and main server (emulated s)."""

    OVERRUN_HINT_FRACTION = 0.05
    """Overruns above this share of the measured delay are this host's slowness, not
    the model's error: worth a hint."""

    def overrun_hint(self, time_dilation: float, num_clients: int) -> str | None:
        """What to do when the host could not keep up with the emulated devices (the
        delay error then measures the host): a larger link.time_dilation."""
        if not (
            self.measured_s > 0 and self.overrun_s > self.OVERRUN_HINT_FRACTION * self.measured_s
        ):
            return None
        suggested = max(2.0 * time_dilation, math.ceil(0.3 * num_clients))
        return (
            f"the emulated devices ran {self.overrun_s:.2f} s late in all "
            f"({100 * self.overrun_s / self.measured_s:.0f}% of the measured delay): this host "
            f"could not keep up, and the delay error counts it; stretch emulated time, e.g. "
            f"--set link.time_dilation={suggested:g}"
        )

    def headline(self) -> str:
        """The delay model's error as `fedsllm run` prints it: over the rounds it is
        really over, saying how many of the run's rounds were left out."""
        from fedsllm.words import counted

        text = (
            f"mean |error| of the delay model {self.mean_abs_error_pct:.1f}% over "
            f"{counted(self.num_rounds_in_mean, 'round')}"
        )
        left_out = self.num_rounds - self.num_rounds_in_mean
        if left_out:
            text += f" of {self.num_rounds}; {left_out} incomplete or partial, left out"
        return text


def load_run(run_dir: str | Path) -> tuple[Any, str, list[TelemetryRecord]]:
    """(scenario, scenario_hash, typed records) of a run; ConfigError naming what is
    missing, or the file and line of a record the telemetry schema cannot read."""
    from fedsllm.roles import load_resolved_scenario
    from fedsllm.trace import read_telemetry

    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError("run_dir", str(root), "is not a directory")
    scenario_path = root / "scenario.json"
    if not scenario_path.is_file():
        raise ConfigError("run_dir", str(root), "missing scenario.json (not a run directory)")
    scenario, scenario_hash = load_resolved_scenario(scenario_path, field=str(scenario_path))
    trace_dir = root / "trace"
    if not trace_dir.is_dir() or not any(trace_dir.glob("*.jsonl")):
        raise ConfigError("run_dir", str(root), "missing trace/*.jsonl (no trace records)")
    records = read_telemetry(trace_dir)
    if not any(r.is_span for r in records):
        raise ConfigError("run_dir", str(root), "trace/*.jsonl hold no spans (run incomplete)")
    return scenario, scenario_hash, records


def planned_rounds(records: list[TelemetryRecord], scenario: Any) -> int | None:
    """How many rounds the run was to have: the controller's plan (its last plan
    event), or training.num_rounds under fixed_steps; None when neither is known.
    An interrupted run has fewer rounds in its records than this."""
    plans = [r for r in records if r.event is EventKind.PLAN and r.has_number("num_rounds")]
    if plans:
        return int(max(plans, key=lambda r: r.t0).number("num_rounds"))
    if scenario.policy.name == "fixed_steps":
        return int(scenario.training.num_rounds)
    return None


def _counts(scenario: Any) -> Any:
    """The real model's counts, or None when the model cannot be counted (e.g. a missing
    local checkpoint): the measured side of the report does not need them."""
    from fedsllm.model.counts import count_scenario

    try:
        return count_scenario(scenario)
    except (ConfigError, OSError, ValueError) as err:
        log.warning("report: cannot count the model (%s); model_s left out", err)
        return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def downlink_used_bps(recorded_bps: float, rates: Any) -> float:
    """The rate a client's gradients were paced at in a round, inf = not paced: what its
    training steps asked the main server for (`recorded_bps`, NaN when the trace does
    not record it), else the rate in force (fedsllm.report.predict.RatesInForce)."""
    if not math.isnan(recorded_bps):
        return recorded_bps
    return rates.downlink_bps if rates is not None else math.inf


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Everything report.json holds (with NaN / inf still in it) for a run directory."""
    scenario, scenario_hash, records = load_run(run_dir)
    return report_from_records(run_dir, scenario, scenario_hash, records)


def report_from_records(
    run_dir: str | Path, scenario: Any, scenario_hash: str, records: list[TelemetryRecord]
) -> dict[str, Any]:
    """The report of already loaded records (see the module docstring for its fields)."""
    from fedsllm.report.phases import measure_rounds, run_start
    from fedsllm.report.predict import error_pct, model_client_s, predict_round, rates_in_force
    from fedsllm.summary import final_val_loss, initial_val_loss, train_losses, val_losses

    dil = float(scenario.link.time_dilation)
    origin = run_start(records)
    k_total = scenario.clients.num_clients
    measured = measure_rounds(records, dil)
    rates = rates_in_force(records, k_total, [m.round for m in measured], scenario.link.backend)
    counts = _counts(scenario)
    beta = scenario.training.batch_size
    emulate = bool(scenario.link.emulate_compute)

    train_by_round = train_losses(records)
    losses_train: list[dict[str, Any]] = []
    losses_val: list[dict[str, Any]] = []
    val_by_round = val_losses(records)
    link_stats: list[dict[str, Any]] = []
    device_summaries: list[dict[str, Any]] = []
    for rec in records:
        event = rec.event
        if event is None:
            continue
        t_s = (rec.t0 - origin) / dil
        if event is EventKind.TRAIN_LOSS:
            loss = rec.number("loss")
            losses_train.append(
                {
                    "t_s": t_s,
                    "round": rec.round,
                    "client": rec.client,
                    "step": rec.step,
                    "loss": loss,
                }
            )
        elif event is EventKind.VAL_LOSS:
            losses_val.append({"t_s": t_s, "round": rec.round, "loss": rec.number("loss")})
        elif event is EventKind.LINK_STATS:
            busy, shaped = rec.number("busy_s", 0.0), int(rec.number("shaped_bytes", 0))
            link_stats.append(
                {
                    "client": rec.client,
                    **rec.extra(),
                    "achieved_bps": shaped * 8.0 / busy if busy > 0 else math.nan,
                }
            )
        elif event is EventKind.DEVICE_SUMMARY:
            device_summaries.append({"role": rec.role, "client": rec.client, **rec.extra()})

    rounds: list[dict[str, Any]] = []
    for m in measured:
        pred = predict_round(
            m,
            rates,
            emulate_compute=emulate,
            aggregation_s=scenario.devices.aggregation_s,
            propagation_delay_s=(
                scenario.link.propagation_delay_s if scenario.link.backend != "none" else 0.0
            ),
            downlink_propagation=scenario.link.backend == "token",
        )
        inputs = None
        if counts is not None:
            from fedsllm.delay.inputs import delay_inputs

            inputs = delay_inputs(scenario, m.round, counts)
        row = m.to_dict()
        clients = []
        model_values = []
        for cm, cm_dict, cp in zip(m.clients, row["clients"], pred.clients, strict=True):
            r = rates.get((m.round, cm.client))
            model_s = math.nan
            if inputs is not None and r is not None and 0 <= cm.client < k_total and cm.num_steps:
                measured_compute = (
                    None if emulate else cm.phases_s["compute"] + cm.phases_s["server"]
                )
                model_s = model_client_s(
                    inputs,
                    cm.client,
                    cm.num_steps,
                    r,
                    8.0 * counts.gradient_bytes * beta,
                    measured_compute,
                )
                model_values.append(model_s)
            down = downlink_used_bps(cm.downlink_paced_bps, r)
            clients.append(
                {
                    "client": cm.client,
                    "num_steps": cm.num_steps,
                    "allocated_steps": r.num_local_steps if r is not None else 0,
                    "measured": cm_dict,
                    "predicted": cp.to_dict(),
                    "model_s": model_s,
                    "rates": r.to_dict() if r is not None else None,
                    "downlink_bps": down,
                    "downlink_paced": math.isfinite(down),
                }
            )
        model_round = max(model_values) if model_values else math.nan
        row.update(
            {
                "predicted_s": pred.predicted_s,
                "model_s": model_round,
                "controller_predicted_s": pred.controller_predicted_s,
                "error_pct": error_pct(m.measured_s, pred.predicted_s),
                "model_error_pct": error_pct(m.measured_s, model_round),
                "train_loss": _mean(train_by_round.get(m.round, [])),
                "val_loss": val_by_round.get(m.round, math.nan),
                "num_overruns": sum(c.num_overruns for c in m.clients),
                "overrun_s": sum(c.overrun_s for c in m.clients),
                "clients": clients,
            }
        )
        rounds.append(row)

    # A round split by a restart (partial) holds only part of its work: not comparable.
    done = [r for r in rounds if r["complete"] and not r["partial"]]
    tot_meas = sum(r["measured_s"] for r in done)
    tot_pred = sum(r["predicted_s"] for r in done)
    errs = [abs(r["error_pct"]) for r in done if math.isfinite(r["error_pct"])]
    evals = [
        {
            "client": r.client,
            "round": r.round,
            "start_s": (r.t0 - origin) / dil,
            "duration_s": (r.t1 - r.t0) / dil,
        }
        for r in records
        if r.phase is Phase.EVAL
    ]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        # Absolute: the report outlives the working directory it was made from.
        "run_dir": str(Path(run_dir).resolve()),
        "scenario_hash": scenario_hash,
        "scenario": scenario.to_dict(),
        "time_dilation": dil,
        "run_start_unix_s": origin,
        "startup_skew_s": sum(m.startup_skew_s for m in measured),
        "settings": {
            "name": scenario.name,
            "policy": scenario.policy.name,
            "link_backend": scenario.link.backend,
            "emulate_compute": emulate,
            "num_clients": k_total,
            "batch_size": beta,
            "aggregation_s": scenario.devices.aggregation_s,
            "propagation_delay_s": scenario.link.propagation_delay_s,
            "downlink_bps": scenario.channel.downlink_bps,
        },
        "counts": None
        if counts is None
        else {
            "phi_c_flops": counts.phi_c,
            "phi_s_flops": counts.phi_s,
            "smashed_bytes_per_batch": counts.smashed_bytes_per_batch(beta),
            "gradient_bytes_per_batch": counts.gradient_bytes_per_batch(beta),
            "client_adapter_bytes": counts.client_adapter_bytes,
        },
        "rounds": rounds,
        "totals": {
            "measured_s": tot_meas,
            "predicted_s": tot_pred,
            "model_s": sum(r["model_s"] for r in done),
            "error_pct": error_pct(tot_meas, tot_pred),
            "mean_abs_error_pct": _mean(errs),
            "num_rounds_in_mean": len(errs),
            "eval_s": sum(e["duration_s"] for e in evals),
            "num_overruns": sum(r["num_overruns"] for r in rounds),
            "overrun_s": sum(r["overrun_s"] for r in rounds),
            "num_rounds": len(rounds),
            "num_rounds_planned": planned_rounds(records, scenario),
            "num_rounds_complete": sum(1 for r in rounds if r["complete"]),
            "num_rounds_partial": sum(1 for r in rounds if r["complete"] and r["partial"]),
        },
        "link_stats": link_stats,
        "device_summaries": device_summaries,
        "losses": {
            "train": losses_train,
            "val": losses_val,
            "initial_val_loss": initial_val_loss(val_by_round),
            "final_val_loss": final_val_loss(val_by_round),
        },
        "eval_spans": evals,
        "figures": [],
        "notes": [],
    }
    report["notes"] = _notes(report)
    # What the launcher said about the channels (fedsllm.security.run_secrets).
    security = Path(run_dir) / "security.txt"
    if security.is_file():
        report["security"] = security.read_text().strip()
    # Faults, restarts and resumes (RUN_DIR/faults.json) and the audit of the rounds.
    from fedsllm.summary import resilience, resilience_lines

    report["resilience"] = resilience(Path(run_dir))
    report["resilience"]["lines"] = resilience_lines(Path(run_dir), report["resilience"])
    return report


def _notes(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    notes = []
    dil = report["time_dilation"]
    if dil != 1.0:
        notes.append(
            f"All durations are emulated seconds: wall-clock durations divided by "
            f"link.time_dilation = {dil:g}."
        )
    notes.append(
        "Validation (eval spans, client 0 between rounds) is not part of the emulated protocol: "
        f"its time inside a round window is cut out of measured_s "
        f"({report['totals']['eval_s']:.3f} s in all)."
    )
    sources = {c["rates"]["source"] for r in report["rounds"] for c in r["clients"] if c["rates"]}
    if "configured" in sources:
        notes.append(
            "Rounds without an allocation use the configured link rates: unshaped links "
            "have infinite rate, so the model predicts zero transfer time."
        )
    if "unshaped_backend" in sources:
        notes.append(
            "link.backend is none: allocated rates were never applied to a link, so the "
            "prediction uses infinite rates."
        )
    if not s["emulate_compute"]:
        notes.append(
            "link.emulate_compute is off: compute ran at host speed, so the prediction uses "
            "the measured compute and server times."
        )
    tot = report["totals"]
    if tot["num_overruns"]:
        notes.append(
            f"The host was slower than the emulated device on {tot['num_overruns']} compute "
            f"steps ({tot['overrun_s']:.3f} s over target): those steps took longer than the "
            "model's FLOPs / speed."
        )
    if report["startup_skew_s"] > 0:
        notes.append(
            f"Round 0 (and a round that opens again after a restart) opens when the last "
            f"client starts its protocol work: the clients' process start-up skew "
            f"({report['startup_skew_s']:.3f} s, evaluation cut out) is not part of the "
            "emulated protocol and is left out of measured_s."
        )
    notes += _restart_notes(report)
    for r in report["rounds"]:
        starts = [c["measured"]["start_s"] for c in r["clients"]]
        starts = [x for x in starts if math.isfinite(x)]
        if starts and max(starts) > 0.1 * max(r["measured_s"], 1e-9):
            notes.append(
                f"Round {r['round']}: clients started up to {max(starts):.3f} s after the round "
                "window opened (process start-up or the evaluation before the first round): "
                "that time counts as waiting."
            )
            break
    notes += _downlink_notes(report)
    incomplete = [r["round"] for r in report["rounds"] if not r["complete"]]
    if incomplete:
        notes.append(f"Rounds without aggregation (incomplete, left out of totals): {incomplete}.")
    if report["counts"] is None:
        notes.append("The model could not be counted: model_s is not available.")
    if s["propagation_delay_s"] > 0 and s["link_backend"] != "none":
        notes.append(
            "link.propagation_delay_s is not part of docs/MODEL.md; the prediction adds it "
            "once per paced message (predicted propagation_s)."
        )
    return notes


def _restart_notes(report: dict[str, Any]) -> list[str]:
    """One note per round that spans a restart: what was cut, and whether it counts."""
    notes = []
    for r in report["rounds"]:
        if not r["restarted"]:
            continue
        head = (
            f"Round {r['round']} spans a restart of the run's processes (fedsllm run --resume, "
            "or the supervisor restarting a role): the round's work a restarted process did "
            "before it (lost with the process) is cut out, and the window opens again when the "
            "last client starts the round's work that is left, so that work, the time the "
            f"processes were down and their start-up ({r['restart_cut_s']:.3f} s in all) are "
            "left out of measured_s."
        )
        if r["partial"]:
            tail = (
                " The window does not hold the whole round (a client had pushed its update "
                "before its restart, or pushed it again, rather than train the round again; or "
                "a process restarted while clients trained), so measured_s is not the round's "
                "delay and the round is left out of the totals."
            )
        else:
            tail = (
                " Every client that lost work ran it again after its restart, so the round is "
                "measured whole, as round 0 is, and counts in the totals."
            )
        notes.append(head + tail)
    return notes


def _downlink_notes(report: dict[str, Any]) -> list[str]:
    """Say whether the downlink was paced: the default (channel.downlink_bps = 0) is not."""
    s = report["settings"]
    paced = [c["downlink_paced"] for r in report["rounds"] for c in r["clients"]]
    if not paced or all(paced):
        return []
    if s["link_backend"] == "none":
        why = "link.backend is none"
    elif s["policy"] == "fixed_steps":
        why = "policy fixed_steps has no controller, so no link rate was ever set"
    elif s["downlink_bps"] <= 0:
        why = "channel.downlink_bps is 0, the default"
    else:
        why = "no downlink rate was in force"
    if any(paced):
        return [
            f"The downlink was paced in only {sum(paced)} of {len(paced)} client-rounds "
            f"({why} in the others): see the downlink column of the link table."
        ]
    return [
        f"The downlink was not paced ({why}): activation gradients and the global adapter "
        "crossed unshaped, so the model counts no time for them, and 'downlink achieved' is "
        "the speed of the local transport, not of an emulated link. Set channel.downlink_bps "
        "(under a controller policy) to pace them."
    ]


def write_report(run_dir: str | Path) -> ReportResult:
    """Write RUN_DIR/report.md, report.json and report_*.png; ConfigError when the run
    directory lacks scenario.json or trace records."""
    root = Path(run_dir)
    scenario, scenario_hash, records = load_run(root)
    report = report_from_records(root, scenario, scenario_hash, records)
    return write_report_files(root, report, records)


def write_report_files(
    run_dir: str | Path, report: dict[str, Any], records: list[TelemetryRecord]
) -> ReportResult:
    """Write an already built report (report_from_records) and its figures into RUN_DIR;
    fills report["figures"] with the PNG file names."""
    from fedsllm.report.figures import write_figures
    from fedsllm.report.render import render_markdown
    from fedsllm.summary import json_clean

    root = Path(run_dir)
    figures = write_figures(report, records, root)
    report["figures"] = [p.name for p in figures]
    md_path = root / "report.md"
    json_path = root / "report.json"
    md_path.write_text(render_markdown(report), encoding="utf-8")
    json_path.write_text(
        json.dumps(json_clean(report), indent=1, allow_nan=False), encoding="utf-8"
    )
    return ReportResult(
        run_dir=root,
        report_md=md_path,
        report_json=json_path,
        figures=tuple(figures),
        num_rounds=len(report["rounds"]),
        mean_abs_error_pct=report["totals"]["mean_abs_error_pct"],
        num_rounds_in_mean=report["totals"]["num_rounds_in_mean"],
        measured_s=report["totals"]["measured_s"],
        overrun_s=report["totals"]["overrun_s"],
    )
