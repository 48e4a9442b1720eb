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
class RunSummary:
    rounds: list[RoundSummary]
    initial_val_loss: float
    final_val_loss: float
    total_wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": [asdict(r) for r in self.rounds],
            "initial_val_loss": self.initial_val_loss,
            "final_val_loss": self.final_val_loss,
            "total_wall_s": self.total_wall_s,
        }


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
    )
