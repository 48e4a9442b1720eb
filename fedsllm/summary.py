"""Per-round run summary computed from the trace records of every process.

Train loss of a round is the mean over all clients' local iterations of that
round; validation loss "after round r" is what the evaluating client measured
on the global model of round r (round -1: the model before training; parsed
here once, by `val_losses`, for every module that needs it); the wall time of
round r is fedsllm.report.phases' round window at time dilation 1 (wall
seconds, evaluation included), so `fedsllm run`'s table and the report
measure the same thing; a round that did not finish has a NaN wall time. A
round that spans a restart of the run's processes (`fedsllm run --resume`, a
role the supervisor restarted) is measured from the restart on, as the report
does, so the time the run was down is not its wall time; one that was only
partly run again after the restart (fedsllm.report.phases' `partial`) has a
NaN wall time too: what was measured is not the whole round. `total_wall_s`
is the elapsed time from the first span to the last round's end, any time
between launches included.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedsllm.telemetry.records import EventKind, Phase, TelemetryRecord
from fedsllm.words import counted


@dataclass(frozen=True)
class RoundSummary:
    round: int
    train_loss: float
    val_loss: float
    wall_s: float
    num_clients: int
    num_steps: int
    restarted: bool = False
    """A process of the run started again inside the round (fedsllm.report.phases'
    `restarted`): wall_s is measured from the restart on (NaN when the round was
    only partly run again)."""


@dataclass(frozen=True)
class ClientLink:
    client: int
    allocated_uplink_bps: float
    """Mean of the uplink rates the controller pushed (NaN without a controller)."""
    achieved_uplink_bps: float
    """Training-step uplink bytes * 8 / their receive time at the main server, in
    emulated seconds (wall / time_dilation), as the allocated rate is."""
    allocated_bandwidth_hz: float
    overrun_s: float
    """Client compute time beyond the emulated device's (0 = emulation held)."""
    downlink_bps: float = 0.0
    """Rate the main server paced this client's activation gradients at (what its
    training steps asked for, mean over the paced steps), bit/s; 0 = unshaped, not
    paced: channel.downlink_bps = 0 (the default), no controller (policy fixed_steps)
    or link.backend none."""
    downlink_paced: bool = False
    """Whether any of this client's training-step gradients were paced."""


@dataclass(frozen=True)
class RunSummary:
    rounds: list[RoundSummary]
    initial_val_loss: float
    final_val_loss: float
    total_wall_s: float
    links: list[ClientLink]
    time_dilation: float = 1.0
    """The run's link.time_dilation: round wall_s and total_wall_s are real seconds,
    this many times the emulated ones; the link rates are emulated already."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def client_links(records: list[TelemetryRecord], time_dilation: float = 1.0) -> list[ClientLink]:
    """Allocated against achieved uplink rate, the downlink rate gradients were paced
    at, and device overruns, per client. Receive times are wall seconds, so the
    achieved rate is divided back out of `time_dilation` (the links ran that many
    times slower than the allocated, emulated, rates)."""
    allocated: dict[int, list[float]] = defaultdict(list)
    allocated_down: dict[int, list[float]] = defaultdict(list)
    asked_down: dict[int, list[float]] = defaultdict(list)
    bandwidth: dict[int, list[float]] = defaultdict(list)
    sent: dict[int, float] = defaultdict(float)
    took: dict[int, float] = defaultdict(float)
    overrun: dict[int, float] = defaultdict(float)
    clients: set[int] = set()
    for rec in records:
        phase, k = rec.phase, rec.client
        if rec.event is EventKind.ALLOCATION:
            uplink_bps = _required(rec, "uplink_bps")
            if uplink_bps > 0:  # 0 means unshaped, not a rate
                allocated[k].append(uplink_bps)
            allocated_down[k].append(rec.number("downlink_bps", 0.0))
            bandwidth[k].append(_required(rec, "bandwidth_hz"))
        elif phase is Phase.WAIT_REPLY and rec.has_number("downlink_bps"):
            # The rate the step's request asked the main server to pace its gradient
            # at (0 = not paced): what happened, whatever was allocated.
            asked_down[k].append(rec.number("downlink_bps"))
        elif phase is Phase.SERVER_COMPUTE and rec.labels.get("mode") == "train":
            clients.add(k)
            sent[k] += rec.number("uplink_bytes", 0.0)
            took[k] += rec.number("receive_s", 0.0)
        elif rec.role == "client" and rec.device is not None:
            overrun[k] += rec.device.overrun_s
    out = []
    for k in sorted(clients | set(allocated)):
        rates, hz = allocated.get(k, []), bandwidth.get(k, [])
        # Traces from before clients recorded the rate fall back to the allocations.
        down = [x for x in asked_down.get(k, allocated_down.get(k, [])) if x > 0]
        out.append(
            ClientLink(
                client=k,
                allocated_uplink_bps=sum(rates) / len(rates) if rates else math.nan,
                achieved_uplink_bps=(
                    8 * sent[k] * time_dilation / took[k] if took.get(k) else math.nan
                ),
                allocated_bandwidth_hz=sum(hz) / len(hz) if hz else math.nan,
                overrun_s=overrun.get(k, 0.0),
                downlink_bps=sum(down) / len(down) if down else 0.0,
                downlink_paced=bool(down),
            )
        )
    return out


def _required(rec: TelemetryRecord, key: str) -> float:
    """A numeric attribute the record's kind always carries; KeyError naming it when absent."""
    if not rec.has_number(key):
        raise KeyError(f"{rec.name} record of {rec.source} (seq {rec.seq}) has no {key!r}")
    return rec.number(key)


def val_losses(records: list[TelemetryRecord]) -> dict[int, float]:
    """Round -> validation loss after it (-1: before training), from val_loss events."""
    return {r.round: _required(r, "loss") for r in records if r.event is EventKind.VAL_LOSS}


def train_losses(records: list[TelemetryRecord]) -> dict[int, list[float]]:
    """Round -> the train losses of its local steps, one per (client, step): a step
    recorded twice was run again after a restart (--resume, a killed client), and
    only its last run counts; the aborted attempt's loss would count the step twice."""
    last: dict[tuple[int, int, int], TelemetryRecord] = {}
    for rec in records:
        if rec.event is EventKind.TRAIN_LOSS:
            key = (rec.round, rec.client, rec.step)
            if key not in last or rec.t0 >= last[key].t0:
                last[key] = rec
    out: dict[int, list[float]] = defaultdict(list)
    for (rnd, _client, _step), rec in sorted(last.items()):
        out[rnd].append(_required(rec, "loss"))
    return dict(out)


def initial_val_loss(val: dict[int, float]) -> float:
    """The loss before training (NaN when not evaluated)."""
    return val.get(-1, math.nan)


def final_val_loss(val: dict[int, float]) -> float:
    """The loss after the last evaluated round (NaN when no round was evaluated)."""
    after = [r for r in val if r >= 0]
    return val[max(after)] if after else math.nan


def json_clean(value: Any) -> Any:
    """Strict JSON: non-finite floats become null ("not available"), keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    return value


def summarize(records: list[TelemetryRecord], time_dilation: float = 1.0) -> RunSummary:
    """The launcher's per-round and per-link summary of a run's records; rounds in
    wall seconds, link rates in emulated terms (`time_dilation`, the scenario's)."""
    from fedsllm.report.phases import measure_rounds, run_start

    losses = train_losses(records)
    clients: dict[int, set[int]] = defaultdict(set)
    round_end: dict[int, float] = {}
    start = run_start(records)
    for rec in records:
        event, rnd = rec.event, rec.round
        if event is EventKind.TRAIN_LOSS:
            clients[rnd].add(rec.client)
        elif event is EventKind.ROUND_DONE:
            round_end[rnd] = rec.t1
    val = val_losses(records)
    windows = {m.round: m for m in measure_rounds(records, 1.0)}
    rounds: list[RoundSummary] = []
    for rnd in sorted(set(losses) | set(round_end)):
        values = losses.get(rnd, [])
        m = windows.get(rnd)
        rounds.append(
            RoundSummary(
                round=rnd,
                train_loss=sum(values) / len(values) if values else math.nan,
                val_loss=val.get(rnd, math.nan),
                wall_s=m.window_s if m is not None and m.complete and not m.partial else math.nan,
                num_clients=len(clients.get(rnd, ())),
                num_steps=len(values),
                restarted=m is not None and m.restarted,
            )
        )
    ends = [start + m.end_s for m in windows.values() if m.complete]
    last_end = max([*ends, *round_end.values()], default=math.nan)
    return RunSummary(
        rounds=rounds,
        initial_val_loss=initial_val_loss(val),
        final_val_loss=final_val_loss(val),
        total_wall_s=last_end - start,
        links=client_links(records, time_dilation),
        time_dilation=time_dilation,
    )


def write_summary(
    run_dir: Path,
    outcome: Any,
    records_or_summary: list[TelemetryRecord] | RunSummary,
    scenario_name: str,
    *,
    time_dilation: float,
) -> RunSummary:
    """RUN_DIR/summary.json: the launcher's outcome (fedsllm.launch.RunOutcome) and the
    run summary (given, or summarized from the records with the scenario's
    `time_dilation`); returns the summary."""
    summary = (
        records_or_summary
        if isinstance(records_or_summary, RunSummary)
        else summarize(records_or_summary, time_dilation)
    )
    failed = outcome.failed
    # A launch a signal cut short (fedsllm.launch.RunOutcome.interrupted) is not ok
    # either, though no role failed: faults.json says the same.
    interrupted = outcome.interrupted or None
    doc = {
        "scenario": scenario_name,
        "run_dir": str(Path(run_dir).resolve()),
        "ok": failed is None and interrupted is None,
        "interrupted": interrupted,
        "failed": None
        if failed is None
        else {
            "process": failed.proc.name,
            "pid": failed.proc.pid,
            "reason": failed.reason,
            "log": str(failed.proc.log_path),
        },
        "exit_codes": outcome.exit_codes,
        # Why a code above is null (a client whose host died before reporting it).
        "exit_unknown": outcome.exit_unknown,
        "launcher_wall_s": outcome.wall_s,
        **summary.to_dict(),
    }
    # Every fault action and restart of every launch at the top (the e2e checks read
    # them there), the launches and the audit under "resilience".
    extra = resilience(run_dir)
    doc.update(
        resumed=extra["resumed"] > 0,
        faults=extra["faults"],
        restarts=extra["restarts"],
        audit=extra["audit"],
        resilience=extra,
    )
    # Strict JSON, as report.json: a round not evaluated has val_loss null, not
    # NaN (which JSON has no word for, and JSON.parse refuses).
    (Path(run_dir) / "summary.json").write_text(
        json.dumps(json_clean(doc), indent=2, allow_nan=False)
    )
    return summary


def resilience(run_dir: Path) -> dict[str, Any]:
    """What the run went through and how it came out: every launch (the first and each
    --resume) with its faults, their actions and restarts (RUN_DIR/faults.json, which
    fedsllm.launch writes), and the audit of its rounds (fedsllm.state.audit)."""
    from fedsllm.launch import read_fault_log
    from fedsllm.state.audit import audit_run_dir

    launches = read_fault_log(Path(run_dir))
    return {
        "launches": launches,
        "resumed": sum(1 for launch in launches if launch.get("resumed")),
        "faults": [
            {**event, "launch": i}
            for i, launch in enumerate(launches)
            for event in launch.get("events", [])
        ],
        "restarts": [
            {**restart, "launch": i}
            for i, launch in enumerate(launches)
            for restart in launch.get("restarts", [])
        ],
        "audit": audit_run_dir(run_dir).to_dict(),
    }


def _when(at_s: Any, rnd: Any) -> str:
    at = f"t={at_s:.1f}s" if isinstance(at_s, int | float) else "t=?"
    return f"{at}, round {rnd}" if rnd is not None else f"{at}, round ?"


def resilience_lines(run_dir: Path, doc: dict[str, Any] | None = None) -> list[str]:
    """Plain lines for `fedsllm run`'s summary and the report: resumes, each fault
    action (time, round, action, error), each restart, how each launch ended (completed,
    rounds done), and the audit. `doc` is `resilience(run_dir)` when already computed."""
    doc = doc if doc is not None else resilience(run_dir)
    lines: list[str] = []
    launches = doc["launches"]
    for i, launch in enumerate(launches):
        label = "resumed" if launch.get("resumed") else "launch"
        head = f"{label} {i + 1} of {len(launches)}:" if len(launches) > 1 else f"{label}:"
        if launch.get("resumed"):
            head += " continued from the roles' stores;"
        policy = f" restart {launch.get('restart', 'never')}"
        if launch.get("restart") == "on-failure":
            policy += f" (at most {launch.get('max_restarts')} per role)"
        rounds = launch.get("rounds_done")
        end = "completed" if launch.get("completed") else f"failed ({launch.get('failed')})"
        done = f", {counted(rounds, 'round')} done" if rounds is not None else ""
        lines.append(f"{head}{policy}; {end}{done}")
        for fault in launch.get("faults", []):
            if fault.get("fired_at_s") is None:
                lines.append(f"  fault {fault['fault']}: never triggered")
                continue
            for action in fault.get("actions", []):
                outcome = f"error: {action['error']}" if action.get("error") else "ok"
                lines.append(
                    f"  fault {fault['fault']}: {action['action']} "
                    f"({_when(action.get('at_s'), action.get('round'))}): {outcome}"
                )
        for restart in launch.get("restarts", []):
            lines.append(
                f"  restart {restart['role']} #{restart['attempt']} by {restart['cause']} "
                f"after {restart['died_of']} ({_when(restart.get('at_s'), restart.get('round'))})"
            )
    if not launches:
        lines.append("faults and restarts: none recorded (no faults.json)")
    lines.append(doc["audit"]["line"])
    return lines
