"""Per-round run summary computed from the trace records of every process.

Train loss of a round is the mean over all clients' local iterations of that
round; validation loss "after round r" is what the evaluating client measured
on the global model of round r (round -1: the model before training); the
wall time of round r runs from the end of round r-1's aggregation (or the
first span of the run) to the end of round r's aggregation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RoundSummary:
    round: int
    train_loss: float
    val_loss: float
    wall_s: float
    num_clients: int
    num_steps: int


@dataclass(frozen=True)
class ClientLink:
    client: int
    allocated_uplink_bps: float
    """Mean of the uplink rates the controller pushed (NaN without a controller)."""
    achieved_uplink_bps: float
    """Training-step uplink bytes * 8 / their receive time at the main server."""
    allocated_bandwidth_hz: float
    overrun_s: float
    """Client compute time beyond the emulated device's (0 = emulation held)."""


@dataclass(frozen=True)
class RunSummary:
    rounds: list[RoundSummary]
    initial_val_loss: float
    final_val_loss: float
    total_wall_s: float
    links: list[ClientLink]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": [asdict(r) for r in self.rounds],
            "initial_val_loss": self.initial_val_loss,
            "final_val_loss": self.final_val_loss,
            "total_wall_s": self.total_wall_s,
            "links": [asdict(link) for link in self.links],
        }


def client_links(records: list[dict[str, Any]]) -> list[ClientLink]:
    """Allocated against achieved uplink rate, and device overruns, per client."""
    allocated: dict[int, list[float]] = defaultdict(list)
    bandwidth: dict[int, list[float]] = defaultdict(list)
    sent: dict[int, float] = defaultdict(float)
    took: dict[int, float] = defaultdict(float)
    overrun: dict[int, float] = defaultdict(float)
    clients: set[int] = set()
    for rec in records:
        extra = rec.get("extra", {})
        if rec["kind"] == "event" and rec["name"] == "allocation":
            if float(extra["uplink_bps"]) > 0:  # 0 means unshaped, not a rate
                allocated[rec["client"]].append(float(extra["uplink_bps"]))
            bandwidth[rec["client"]].append(float(extra["bandwidth_hz"]))
        elif rec["name"] == "server_compute" and extra.get("mode") == "train":
            clients.add(rec["client"])
            sent[rec["client"]] += float(extra.get("uplink_bytes", 0))
            took[rec["client"]] += float(extra.get("receive_s", 0.0))
        elif rec["role"] == "client" and isinstance(extra.get("device"), dict):
            overrun[rec["client"]] += float(extra["device"].get("overrun_s", 0.0))
    out = []
    for k in sorted(clients | set(allocated)):
        rates, hz = allocated.get(k, []), bandwidth.get(k, [])
        out.append(
            ClientLink(
                client=k,
                allocated_uplink_bps=sum(rates) / len(rates) if rates else math.nan,
                achieved_uplink_bps=8 * sent[k] / took[k] if took.get(k) else math.nan,
                allocated_bandwidth_hz=sum(hz) / len(hz) if hz else math.nan,
                overrun_s=overrun.get(k, 0.0),
            )
        )
    return out


def summarize(records: list[dict[str, Any]]) -> RunSummary:
    losses: dict[int, list[float]] = defaultdict(list)
    clients: dict[int, set[int]] = defaultdict(set)
    val: dict[int, float] = {}
    round_end: dict[int, float] = {}
    spans = [r for r in records if r["kind"] == "span"]
    start = min((r["t0"] for r in spans), default=math.nan)
    for rec in records:
        if rec["kind"] != "event":
            continue
        name, rnd = rec["name"], rec["round"]
        if name == "train_loss":
            losses[rnd].append(float(rec["extra"]["loss"]))
            clients[rnd].add(rec["client"])
        elif name == "val_loss":
            val[rnd] = float(rec["extra"]["loss"])
        elif name == "round_done":
            round_end[rnd] = rec["t1"]
    rounds: list[RoundSummary] = []
    for rnd in sorted(set(losses) | set(round_end)):
        begin = round_end.get(rnd - 1, start)
        end = round_end.get(rnd, math.nan)
        values = losses.get(rnd, [])
        rounds.append(
            RoundSummary(
                round=rnd,
                train_loss=sum(values) / len(values) if values else math.nan,
                val_loss=val.get(rnd, math.nan),
                wall_s=end - begin,
                num_clients=len(clients.get(rnd, ())),
                num_steps=len(values),
            )
        )
    last_end = max(round_end.values(), default=math.nan)
    final_round = max(val, default=-1)
    return RunSummary(
        rounds=rounds,
        initial_val_loss=val.get(-1, math.nan),
        final_val_loss=val.get(final_round, math.nan) if final_round >= 0 else math.nan,
        total_wall_s=last_end - start,
        links=client_links(records),
    )
