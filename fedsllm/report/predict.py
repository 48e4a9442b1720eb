"""What the delay model (docs/MODEL.md section 3) predicts for the rounds a run actually executed.

For each round and client: the link rates in force (the allocation events of
the controller, else the clients' rates_applied events, else the rates the
run configured, i.e. unshaped = infinite rate = zero transfer time), the
integer local iterations actually executed, and the constants actually
measured (bytes from the transfer spans, FLOPs / device speed from the
device records) go through the formulas of docs/MODEL.md section 3:

    tau_k   = beta*phi_c/f_k + beta*phi_s/f_S (+ beta*s_dl/R_dl)
    iter_k  = tau_k + beta*s/R_k
    round_k = n*iter_k + omega/R_k + omega/R_dl + t_agg

with n*beta*phi_c/f_k taken as the sum of the executed steps' target_s (the
same FLOPs / f_k the pacer used), n*beta*s as the bytes the uplink spans
carried, and so on. Compute terms come from the model only when
link.emulate_compute is on; otherwise the measured compute is used, because
nothing made the host run at f_k. The round prediction is the slowest
client's. Waiting (a client's wait_global span: the slowest client and the
aggregation) is not a transfer: the model predicts none for it, and no wait
span's time or bytes enter a transfer term; a faster client's waiting is what
the slowest client's round_k covers. Propagation delay
(link.propagation_delay_s, not part of docs/MODEL.md) is added per paced
message when configured, as its own term. Measuring is fedsllm.report.phases'
job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedsllm.report.phases import PHASES, ClientMeasured, RoundMeasured
from fedsllm.telemetry.records import EventKind, TelemetryRecord


@dataclass(frozen=True)
class RatesInForce:
    """A client's link rates during a round; inf = unshaped (no transfer time)."""

    uplink_bps: float
    downlink_bps: float
    source: str
    """Where the rates came from, most authoritative first: allocation, rates_applied,
    configured or unshaped_backend."""
    version: int = -1
    """Allocation version (-1 without one)."""
    bandwidth_hz: float = math.nan
    share: float = math.nan
    num_local_steps: int = 0
    """Local iterations the allocation asked for (0 = none given)."""
    predicted_round_s: float = math.nan
    """The controller's own round prediction (NaN without one)."""
    num_versions: int = 0
    """Allocation versions issued for this round (> 1: re-solved during the round)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClientPredicted:
    client: int
    phases_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    propagation_s: float = 0.0
    total_s: float = 0.0
    compute_source: str = "model"
    """model (FLOPs / device speed) or measured (compute not emulated, or no device records)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RoundPredicted:
    round: int
    predicted_s: float
    clients: list[ClientPredicted]
    controller_predicted_s: float = math.nan
    """The allocation's predicted_round_s (the controller's plan), NaN without one."""


def _unshaped(rate: float) -> float:
    """0 and inf both mean unshaped, as in fedsllm.link.base.check_rate."""
    rate = float(rate)
    return math.inf if rate <= 0 or math.isinf(rate) or math.isnan(rate) else rate


def rates_in_force(
    records: list[TelemetryRecord], num_clients: int, rounds: list[int], link_backend: str
) -> dict[tuple[int, int], RatesInForce]:
    """(round, client) -> rates in force; the newest version issued for a round <= r wins."""
    allocs: dict[int, list[tuple[int, int, TelemetryRecord]]] = {k: [] for k in range(num_clients)}
    source = "configured"
    kinds = {r.event for r in records if r.is_event}
    wanted = EventKind.ALLOCATION if EventKind.ALLOCATION in kinds else EventKind.RATES_APPLIED
    if wanted in kinds:
        source = wanted.value
    for rec in records:
        if rec.event is not wanted:
            continue
        k = int(rec.number("client_id", rec.client))
        rnd = int(rec.number("round", rec.round))
        if k in allocs:
            allocs[k].append((rnd, int(rec.number("version", 0)), rec))
    out: dict[tuple[int, int], RatesInForce] = {}
    for rnd in rounds:
        for k in range(num_clients):
            usable = [a for a in allocs[k] if a[0] <= rnd]
            if link_backend == "none" or not usable:
                best = max(usable, key=lambda a: a[1]) if usable else None
                out[(rnd, k)] = RatesInForce(
                    uplink_bps=math.inf,
                    downlink_bps=math.inf,
                    source="unshaped_backend" if link_backend == "none" else "configured",
                    version=best[1] if best else -1,
                    num_local_steps=int(best[2].number("num_local_steps", 0)) if best else 0,
                )
                continue
            _, version, alloc = max(usable, key=lambda a: a[1])
            out[(rnd, k)] = RatesInForce(
                uplink_bps=_unshaped(alloc.number("uplink_bps", 0.0)),
                downlink_bps=_unshaped(alloc.number("downlink_bps", 0.0)),
                source=source,
                version=version,
                bandwidth_hz=alloc.number("bandwidth_hz", math.nan),
                share=alloc.number("share", math.nan),
                num_local_steps=int(alloc.number("num_local_steps", 0)),
                predicted_round_s=alloc.number("predicted_round_s", math.nan),
                num_versions=len({a[1] for a in allocs[k] if a[0] == rnd}),
            )
    return out


def transfer_s(num_bytes: float, rate_bps: float) -> float:
    """bytes * 8 / rate; zero on an unshaped (infinite-rate) link."""
    return 0.0 if math.isinf(rate_bps) else num_bytes * 8.0 / rate_bps


def predict_client(
    measured: ClientMeasured,
    rates: RatesInForce,
    *,
    emulate_compute: bool,
    aggregation_s: float,
    propagation_delay_s: float = 0.0,
    downlink_propagation: bool = False,
) -> ClientPredicted:
    """round_k of docs/MODEL.md section 3 for what client k actually executed (module docstring).

    `propagation_delay_s` is charged once per message a shaper paced: each
    uplink transfer and the adapter upload (the client paces both, token or
    tc); with `downlink_propagation` (the token backend, where the servers
    pace the downlink in-process) also each gradient reply and the global
    adapter's download, when the downlink is shaped. Under tc the kernel
    shapes the downlink and nothing adds a delay to it."""
    p = ClientPredicted(client=measured.client)
    ph = p.phases_s
    if emulate_compute and measured.num_client_device_steps > 0:
        ph["compute"] = measured.client_target_s
    else:
        ph["compute"] = measured.phases_s["compute"]
        p.compute_source = "measured"
    if emulate_compute and measured.num_server_device_steps > 0:
        ph["server"] = measured.server_target_s
    else:
        ph["server"] = measured.phases_s["server"]
        p.compute_source = "measured"
    up, down = rates.uplink_bps, rates.downlink_bps
    ph["uplink"] = transfer_s(measured.uplink_bytes, up)
    ph["downlink"] = transfer_s(measured.downlink_bytes, down)
    ph["adapter_upload"] = transfer_s(measured.adapter_bytes, up)
    ph["global_download"] = transfer_s(measured.global_bytes, down)
    ph["aggregation"] = aggregation_s
    if propagation_delay_s > 0 and rates.source != "unshaped_backend":
        num_msgs = measured.num_uplink_msgs + (measured.adapter_bytes > 0)
        if downlink_propagation and not math.isinf(down):
            # The main server paces each reply, the fed server the global adapter
            # (fedsllm.roles.pace_downlink), only at a rate the allocation set.
            num_msgs += measured.num_downlink_msgs + (measured.global_bytes > 0)
        p.propagation_s = propagation_delay_s * num_msgs
    p.total_s = sum(ph.values()) + p.propagation_s
    return p


def predict_round(
    measured: RoundMeasured,
    rates: dict[tuple[int, int], RatesInForce],
    *,
    emulate_compute: bool,
    aggregation_s: float,
    propagation_delay_s: float = 0.0,
    downlink_propagation: bool = False,
) -> RoundPredicted:
    """The model's round delay: the slowest client's round_k (docs/MODEL.md section 3)."""
    clients = [
        predict_client(
            c,
            rates.get((measured.round, c.client), RatesInForce(math.inf, math.inf, "configured")),
            emulate_compute=emulate_compute,
            aggregation_s=aggregation_s,
            propagation_delay_s=propagation_delay_s,
            downlink_propagation=downlink_propagation,
        )
        for c in measured.clients
    ]
    plans = [
        rates[(measured.round, c.client)].predicted_round_s
        for c in measured.clients
        if (measured.round, c.client) in rates
    ]
    plans = [x for x in plans if math.isfinite(x)]
    return RoundPredicted(
        round=measured.round,
        predicted_s=max((c.total_s for c in clients), default=math.nan),
        clients=clients,
        controller_predicted_s=max(plans) if plans else math.nan,
    )


def error_pct(measured_s: float, predicted_s: float) -> float:
    """(predicted - measured) / measured * 100: positive when the model over-predicts."""
    if not (math.isfinite(measured_s) and math.isfinite(predicted_s)) or measured_s <= 0:
        return math.nan
    return (predicted_s - measured_s) / measured_s * 100.0


def model_client_s(
    inputs: Any,
    k: int,
    num_iterations: int,
    rates: RatesInForce,
    gradient_bits_per_iter: float,
    measured_compute_s: float | None = None,
) -> float:
    """round_k from the counted constants alone (fedsllm.delay.DelayInputs),
    docs/MODEL.md section 3.

    The planner's view of the same round: phi_c, phi_s, s and omega counted from
    the model rather than read from the trace; `rates` replace the inputs' own
    R_k and R_dl. `measured_compute_s` (client + server) replaces the compute
    terms when compute was not emulated.
    """
    n = int(num_iterations)
    if measured_compute_s is None:
        compute = n * float(inputs.client_compute_s[k] + inputs.server_compute_s[k])
    else:
        compute = measured_compute_s
    up, down = rates.uplink_bps, rates.downlink_bps
    comm = transfer_s((n * inputs.bits_per_iter[k] + inputs.omega_bits[k]) / 8.0, up)
    comm += transfer_s((n * gradient_bits_per_iter + inputs.omega_bits[k]) / 8.0, down)
    return compute + comm + float(inputs.aggregation_s)
