"""Trace spans -> measured round windows and per-client phase durations, in emulated seconds.

This module only measures; what the delay model expects is fedsllm.report.predict's
job. Definitions (the report and its tests rely on them):

- Round window of round r: from the end of round r-1 (below) to the end of
  round r's aggregation span, or, for a round whose trace has a round_done
  event but no aggregation span, that event's time. A round with neither is
  incomplete: its window ends at its last protocol span.
- The first round (and any round whose predecessor has no end) opens when the
  LAST client starts its protocol work of that round (its first client span
  other than the global download, which may have waited for every client to
  join): docs/MODEL.md's clients start a round together, so the clients' process
  start-up skew is not part of the emulated protocol. That skew (last start
  minus first start, evaluation inside it cut out) is kept as
  `RoundMeasured.startup_skew_s`.
- A round whose window holds a process restart (`process_restarts`: a process
  of the run that started again, as every one does after `fedsllm run
  --resume`, or a role the supervisor restarted) is measured from the
  restarts on. The round's spans that a restarted process left before its
  last restart in the window (a client's, and the main server's for that
  client or its own) are the round's work lost with the process and are left
  out; the window opens as the first round's does over the spans that are
  left (when the last client starts its work). What that cuts (the lost work,
  the time the run was down between two launches, the start-up) is
  `RoundMeasured.restart_cut_s`: the time between launches is no protocol
  time, and nothing in the trace says how long the round would have taken
  without the fault. The round is measured whole, as exactly as the first
  round is, when no work of it was lost (each restarted client started every
  training step it had started again, and uploaded its adapter again if it
  had) and no process restarted after the window opens again. Otherwise (a
  client that had pushed its update, or pushed its saved update again, rather
  than train the round again; a server restarted while clients trained) the
  window holds part of the round: the round is `RoundMeasured.partial`, and
  the report leaves it out of its totals.
- Eval spans (validation on client 0 between rounds) are not part of the
  emulated protocol: their overlap with a window is cut out of the time axis,
  `measured_s = window_s - eval_s`. That is exact when the evaluating client
  is the last to finish and an upper bound on eval's effect otherwise; both
  numbers are kept.
- Phases of client k in round r (durations clipped to the window): compute
  (client_forward + client_backward), uplink, server (main server's
  train-mode server_compute for k), downlink (main server's downlink spans
  for k), adapter_upload, global_download (the transfer of the global
  adapter that opens round r), aggregation (the fed server's span of round r,
  shared by all), and waiting: whatever is left of the client's window. Most
  of it is the client's wait_global span, from its adapter upload until the
  fed server starts sending the next global adapter (waiting for the slowest
  client and the aggregation, less the aggregation itself); the rest is
  queueing at the server, transfer latency and start-up. Waiting is never a
  transfer. server and downlink sit inside the client's wait_reply spans, so
  the phases do not overlap.
- Achieved rates (achieved_uplink_bps, achieved_downlink_bps) divide the bytes
  of a round's transfer spans by those same spans' whole durations, not by
  the clipped phase: a client that started round 0 before the window opened
  still sent all its bytes, over all of its span.
- Every wall-clock duration is divided by `time_dilation`; device records
  (extra.device) are already in emulated seconds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from fedsllm.telemetry.records import (
    DeviceStep,
    EventKind,
    Phase,
    TelemetryRecord,
    source_name,
)

PHASES = (
    "compute",
    "uplink",
    "server",
    "downlink",
    "adapter_upload",
    "global_download",
    "aggregation",
    "waiting",
)
"""Per-client phases of a round, in the order a report shows them."""

CLIENT_PROTOCOL_SPANS: tuple[Phase, ...] = (
    Phase.GLOBAL_DOWNLOAD,
    Phase.CLIENT_FORWARD,
    Phase.UPLINK,
    Phase.WAIT_REPLY,
    Phase.CLIENT_BACKWARD,
    Phase.ADAPTER_UPLOAD,
)
"""Client-side spans that belong to the emulated protocol (eval is not one, nor is
wait_global: waiting for the round to close is what `waiting` measures)."""

CLIENT_WORK_SPANS = tuple(p for p in CLIENT_PROTOCOL_SPANS if p is not Phase.GLOBAL_DOWNLOAD)
"""Client protocol spans that mark a client at work in a round: its global download may
have waited for every client to join, so it does not say when the client started."""


@dataclass
class ClientMeasured:
    """What client k did in one round, emulated seconds unless named otherwise."""

    client: int
    num_steps: int = 0
    phases_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    wait_reply_s: float = 0.0
    """Client-side wait for the server's reply (server + downlink + queueing)."""
    eval_s: float = 0.0
    """This client's own eval time inside the window (cut out of its total)."""
    total_s: float = 0.0
    """window_s - eval_s: the sum of `phases_s`."""
    num_uplink_msgs: int = 0
    num_downlink_msgs: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    """From the main server's downlink spans (the client's wait_reply bytes when absent)."""
    uplink_transfer_s: float = 0.0
    """Whole (unclipped) duration of the uplink spans whose bytes `uplink_bytes` counts."""
    downlink_transfer_s: float = 0.0
    """Whole (unclipped) duration of the main server's downlink spans for this client."""
    downlink_paced_bps: float = math.nan
    """Rate this round's gradients were paced at, as the client's steps asked the main
    server (mean over the paced steps); inf = not paced (unshaped downlink); NaN = not
    recorded (a trace from before the client recorded it)."""
    adapter_bytes: int = 0
    global_bytes: int = 0
    client_target_s: float = 0.0
    """Sum of device target_s (FLOPs / f_k) over this round's client compute steps."""
    server_target_s: float = 0.0
    """Sum of device target_s (FLOPs / f_S) over the server's train steps for this client."""
    num_client_device_steps: int = 0
    num_server_device_steps: int = 0
    client_overrun_s: float = 0.0
    server_overrun_s: float = 0.0
    num_overruns: int = 0
    start_s: float = math.nan
    """This client's first training span, seconds after the window start (negative in
    the first round for a client that started before the last one did)."""
    finish_s: float = math.nan
    """End of this client's adapter upload, seconds after the window start."""
    flops: float = 0.0
    """Client FLOPs paced this round (from device records)."""

    @property
    def overrun_s(self) -> float:
        return self.client_overrun_s + self.server_overrun_s

    @property
    def achieved_uplink_bps(self) -> float:
        """Uplink bytes * 8 / the uplink spans' whole seconds (emulated); NaN without
        uplink time. Not the clipped phase: that would count all the bytes over part of
        the time."""
        return _rate(self.uplink_bytes, self.uplink_transfer_s)

    @property
    def achieved_downlink_bps(self) -> float:
        """Downlink bytes * 8 / the downlink spans' whole seconds (emulated)."""
        return _rate(self.downlink_bytes, self.downlink_transfer_s)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["overrun_s"] = self.overrun_s
        out["achieved_uplink_bps"] = self.achieved_uplink_bps
        out["achieved_downlink_bps"] = self.achieved_downlink_bps
        return out


@dataclass
class RoundMeasured:
    """One round's window and its clients, emulated seconds (offsets from the run start)."""

    round: int
    complete: bool
    start_s: float
    end_s: float
    window_s: float
    eval_s: float
    measured_s: float
    aggregation_s: float
    clients: list[ClientMeasured]
    startup_skew_s: float = 0.0
    """Emulated seconds between the first and the last client starting this round's
    work, evaluation cut out; left out of the window (non-zero only for a round that
    opens without a previous round's end, i.e. round 0, or after a restart)."""
    restarted: bool = False
    """A process of the run started again inside this round (fedsllm run --resume, or
    the supervisor restarting a role): the work it left before is cut out, and the
    window opens again when the last client starts the round's work that is left."""
    restart_cut_s: float = 0.0
    """Emulated seconds left out of the window for the restart: from where the round
    opened before it (the previous round's end) to where it opens after it (the
    round's lost work, the downtime between launches, start-up)."""
    partial: bool = False
    """Restarted, and the window does not hold the whole round: some client's work of
    the round was done only before its restart, or a process restarted after the window
    opens again. Not comparable with a prediction."""

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "clients"}
        out["clients"] = [c.to_dict() for c in self.clients]
        return out


def _rate(num_bytes: int, seconds: float) -> float:
    return num_bytes * 8.0 / seconds if seconds > 0 else math.nan


def _clipped(rec: TelemetryRecord, lo: float, hi: float) -> float:
    return max(0.0, min(rec.t1, hi) - max(rec.t0, lo))


def _whole(rec: TelemetryRecord) -> float:
    return max(0.0, rec.t1 - rec.t0)


def union_length(intervals: Iterable[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `intervals` inside [lo, hi] (overlapping evals count once)."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if min(b, hi) > max(a, lo))
    total = 0.0
    cur_a, cur_b = math.nan, math.nan
    for a, b in clipped:
        if math.isnan(cur_a) or a > cur_b:
            if not math.isnan(cur_a):
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if not math.isnan(cur_a):
        total += cur_b - cur_a
    return total


def run_start(records: list[TelemetryRecord]) -> float:
    """Wall-clock origin of the report's time axis: the first span of the run."""
    return min((r.t0 for r in records if r.is_span), default=math.nan)


def is_protocol_span(rec: TelemetryRecord) -> bool:
    """Spans of the emulated protocol: client-side phases, train-mode server work, aggregation."""
    phase = rec.phase
    if phase is None:
        return False
    if rec.role == "client":
        return phase in CLIENT_PROTOCOL_SPANS
    if rec.role == "main_server":
        return phase is Phase.DOWNLINK or (
            phase is Phase.SERVER_COMPUTE and rec.labels.get("mode", "train") == "train"
        )
    return rec.role == "fed_server" and phase is Phase.AGGREGATION


def _device(rec: TelemetryRecord) -> DeviceStep | None:
    dev = rec.device
    return dev if dev is not None and dev.done else None


def _round_ends(records: list[TelemetryRecord]) -> dict[int, tuple[float, TelemetryRecord | None]]:
    """Round -> (end time, its aggregation span): the latest aggregation span's end, or
    the round_done event's time for a round that has no aggregation span."""
    ends: dict[int, tuple[float, TelemetryRecord | None]] = {}
    for rec in records:
        if rec.phase is Phase.AGGREGATION and is_protocol_span(rec):
            rnd = rec.round
            if rnd not in ends or ends[rnd][1] is None or rec.t1 >= ends[rnd][0]:
                ends[rnd] = (rec.t1, rec)
    for rec in records:
        if rec.event is EventKind.ROUND_DONE:
            rnd = rec.round
            if rnd not in ends or (ends[rnd][1] is None and rec.t1 > ends[rnd][0]):
                ends[rnd] = (rec.t1, None)
    return ends


PROCESS_START_EVENTS: dict[EventKind, tuple[str, ...]] = {
    EventKind.CLOCK_OFFSET: ("client", "main_server"),
    EventKind.PLAN: ("fed_server",),
}
"""Events a process records once when it starts, by the roles that record them: clients
and the main server align their clocks with the fed server (fedsllm.roles.align_clock),
and the fed server's controller records its plan when it is built (a fed server without
a controller records none: its restart alone is not seen)."""


def restarts_by_source(records: list[TelemetryRecord]) -> dict[str, list[float]]:
    """Source (client_<k>, main_server, fed_server) -> the times it started again,
    sorted: each of its start events (PROCESS_START_EVENTS) after its first. A source's
    first start is none, even inside a round (a client that joins late)."""
    starts: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        event = rec.event
        if event is not None and rec.role in PROCESS_START_EVENTS.get(event, ()):
            starts[rec.source].append(rec.t0)
    return {src: sorted(times)[1:] for src, times in starts.items() if len(times) > 1}


def process_restarts(records: list[TelemetryRecord]) -> list[float]:
    """Times at which a process of the run started again, sorted (restarts_by_source)."""
    return sorted(t for times in restarts_by_source(records).values() for t in times)


def _lost(rec: TelemetryRecord, last_start: dict[str, float]) -> bool:
    """Whether a record was left by a process that started again after it (`last_start`:
    source -> its last restart in the window): a client's own spans, the main server's
    spans of its own or for that client (the steps the client will run again)."""
    if rec.t0 < last_start.get(rec.source, -math.inf):
        return True
    return (
        rec.role == "main_server"
        and rec.client >= 0
        and rec.t0 < last_start.get(source_name("client", rec.client), -math.inf)
    )


def _rerun_whole(lost: list[TelemetryRecord], kept: list[TelemetryRecord]) -> bool:
    """Whether every client whose work on a round was lost with a restart ran that work
    again: started every training step it had started (client_forward) again, and
    uploaded its adapter again if it had."""

    def work(recs: list[TelemetryRecord]) -> dict[int, tuple[set[int], bool]]:
        out: dict[int, tuple[set[int], bool]] = {}
        for r in recs:
            if r.role == "client" and r.phase in CLIENT_WORK_SPANS:
                steps, uploaded = out.setdefault(r.client, (set(), False))
                if r.phase is Phase.CLIENT_FORWARD:
                    steps.add(r.step)
                out[r.client] = (steps, uploaded or r.phase is Phase.ADAPTER_UPLOAD)
        return out

    again = work(kept)
    for k, (steps, uploaded) in work(lost).items():
        steps_again, uploaded_again = again.get(k, (set(), False))
        if not steps <= steps_again or (uploaded and not uploaded_again):
            return False
    return True


def _first_round_start(
    recs: list[TelemetryRecord], evals: list[tuple[float, float]]
) -> tuple[float, float] | None:
    """(window start, start-up skew in wall seconds) of a round that opens without a
    previous round's end: the last client's first work span; None without client work."""
    starts: dict[int, float] = {}
    for r in recs:
        if r.role == "client" and r.phase in CLIENT_WORK_SPANS:
            starts[r.client] = min(starts.get(r.client, math.inf), r.t0)
    if not starts:
        return None
    lo, hi = min(starts.values()), max(starts.values())
    return hi, max(0.0, hi - lo - union_length(evals, lo, hi))


def measure_rounds(records: list[TelemetryRecord], time_dilation: float) -> list[RoundMeasured]:
    """Per-round windows and per-client phases of a run's records (see the module docstring)."""
    dil = float(time_dilation)
    origin = run_start(records)
    ends = _round_ends(records)
    by_round: dict[int, list[TelemetryRecord]] = defaultdict(list)
    evals: list[TelemetryRecord] = []
    for rec in records:
        if rec.phase is Phase.EVAL:
            evals.append(rec)
        elif is_protocol_span(rec):
            by_round[rec.round].append(rec)
    eval_windows = [(e.t0, e.t1) for e in evals]
    restarts = restarts_by_source(records)
    rounds: list[RoundMeasured] = []
    # The final global download is labelled round num_rounds: no round of its own.
    real = [
        r
        for r in by_round
        if r >= 0 and any(x.phase is not Phase.GLOBAL_DOWNLOAD for x in by_round[r])
    ]
    for rnd in sorted(real):
        recs = round_recs = by_round[rnd]
        first = min(r.t0 for r in recs if r.phase is not Phase.GLOBAL_DOWNLOAD)
        skew = 0.0
        if rnd - 1 in ends:
            start = min(ends[rnd - 1][0], first)
        else:
            opened = _first_round_start(recs, eval_windows)
            start, skew = opened if opened is not None else (first, 0.0)
        complete = rnd in ends
        agg = ends[rnd][1] if complete else None
        end = ends[rnd][0] if complete else max(r.t1 for r in recs)
        # Each restarted process's last start inside the round: after it opened, or after
        # its first span began (round 0 may open only after the restart, at the start of
        # a client that did nothing before it).
        lo = min(start, min(r.t0 for r in recs))
        last_start = {
            src: max(inside)
            for src, times in restarts.items()
            if (inside := [t for t in times if lo < t < end])
        }
        restarted = bool(last_start)
        cut = 0.0
        partial = False
        if restarted:
            lost = [r for r in recs if _lost(r, last_start)]
            recs = [r for r in recs if not _lost(r, last_start)]
            opened = _first_round_start(recs, eval_windows)
            if opened is not None:
                new_start, skew = opened
            else:  # no client work left: from the first span left, or the last restart
                new_start = min((r.t0 for r in recs), default=max(last_start.values()))
                skew = 0.0
            new_start = max(start, min(new_start, end))
            partial = (
                opened is None
                or not _rerun_whole(lost, recs)
                or max(last_start.values()) > new_start
            )
            cut, start = new_start - start, new_start
        window_s = (end - start) / dil
        eval_s = union_length(eval_windows, start, end) / dil
        agg_s = _clipped(agg, start, end) / dil if agg is not None else 0.0
        # After a restart, a client whose work was all before it is still listed (with
        # nothing measured): the round was not all run again.
        client_ids = sorted({r.client for r in round_recs if r.client >= 0})
        clients = []
        for k in client_ids:
            own_evals = [(e.t0, e.t1) for e in evals if e.client == k]
            own_eval_s = union_length(own_evals, start, end) / dil
            clients.append(
                _measure_client(
                    k,
                    [r for r in recs if r.client == k],
                    start,
                    end,
                    dil,
                    agg_s,
                    window_s,
                    own_eval_s,
                )
            )
        rounds.append(
            RoundMeasured(
                round=rnd,
                complete=complete,
                start_s=(start - origin) / dil,
                end_s=(end - origin) / dil,
                window_s=window_s,
                eval_s=eval_s,
                measured_s=window_s - eval_s,
                aggregation_s=agg_s,
                clients=clients,
                startup_skew_s=skew / dil,
                restarted=restarted,
                restart_cut_s=cut / dil,
                partial=partial,
            )
        )
    return rounds


def _measure_client(
    k: int,
    recs: list[TelemetryRecord],
    start: float,
    end: float,
    dil: float,
    agg_s: float,
    window_s: float,
    own_eval_s: float,
) -> ClientMeasured:
    c = ClientMeasured(client=k)
    ph = c.phases_s
    steps: set[int] = set()
    downlink_seen = False
    reply_bytes = 0
    asked: list[float] = []
    last_upload = math.nan
    first_train = min(
        (r.t0 for r in recs if r.role == "client" and r.phase is not Phase.GLOBAL_DOWNLOAD),
        default=math.nan,
    )
    for rec in recs:
        phase, role = rec.phase, rec.role
        dur = _clipped(rec, start, end) / dil
        dev = _device(rec)
        if role == "client" and phase in (Phase.CLIENT_FORWARD, Phase.CLIENT_BACKWARD):
            ph["compute"] += dur
            if phase is Phase.CLIENT_FORWARD:
                steps.add(rec.step)
            if dev is not None:
                c.client_target_s += dev.target_s
                c.flops += dev.flops
                c.num_client_device_steps += 1
                c.client_overrun_s += dev.overrun_s
                c.num_overruns += int(dev.overrun_s > 0)
        elif role == "client" and phase is Phase.UPLINK:
            ph["uplink"] += dur
            c.uplink_bytes += rec.bytes
            c.uplink_transfer_s += _whole(rec) / dil
            c.num_uplink_msgs += 1
        elif role == "client" and phase is Phase.WAIT_REPLY:
            c.wait_reply_s += dur
            reply_bytes += rec.bytes
            if rec.has_number("downlink_bps"):
                asked.append(rec.number("downlink_bps"))
        elif role == "client" and phase is Phase.ADAPTER_UPLOAD:
            ph["adapter_upload"] += dur
            c.adapter_bytes += rec.bytes
            last_upload = rec.t1 if math.isnan(last_upload) else max(last_upload, rec.t1)
        elif role == "client" and phase is Phase.GLOBAL_DOWNLOAD:
            ph["global_download"] += dur
            c.global_bytes += rec.bytes
        elif role == "main_server" and phase is Phase.SERVER_COMPUTE:
            ph["server"] += dur
            if dev is not None:
                c.server_target_s += dev.target_s
                c.num_server_device_steps += 1
                c.server_overrun_s += dev.overrun_s
                c.num_overruns += int(dev.overrun_s > 0)
        elif role == "main_server" and phase is Phase.DOWNLINK:
            downlink_seen = True
            ph["downlink"] += dur
            c.downlink_bytes += rec.bytes
            c.downlink_transfer_s += _whole(rec) / dil
            c.num_downlink_msgs += 1
    if not downlink_seen:
        c.downlink_bytes = reply_bytes
    if asked:
        paced = [x for x in asked if x > 0]  # 0 asks for no pacing
        c.downlink_paced_bps = sum(paced) / len(paced) if paced else math.inf
    c.num_steps = len(steps)
    ph["aggregation"] = agg_s
    c.eval_s = own_eval_s
    busy = sum(v for name, v in ph.items() if name != "waiting")
    ph["waiting"] = max(0.0, window_s - own_eval_s - busy)
    c.total_s = sum(ph.values())
    c.start_s = (first_train - start) / dil
    c.finish_s = (last_upload - start) / dil if not math.isnan(last_upload) else math.nan
    return c
