"""Did the clients run the controller's plan? A check on a run's typed telemetry.

The controller records its plan (`plan` event: local steps n, rounds N) and
every allocation it pushes (`allocation` events: per client and round, the
bandwidth share, the uplink and downlink rates and n); each client records
the allocations it applied to its shaper (`rates_applied`), its local
iterations (one `client_backward` span per step) and, per step, the downlink
rate it asked the main server to pace at (`wait_reply` extra.downlink_bps).
`check_plan` compares them:

- rounds: the rounds clients trained are exactly 0 .. N-1;
- local steps: every client ran, in every round, exactly n steps, and n is
  the plan's and the allocation's;
- allocations: every allocation a client applied is one the controller
  issued for it, with the issued rates, bandwidth and n (relative tolerance
  `rtol`), and each round ran on the rates of the controller's latest
  allocation for that client (a version superseded before the client
  subscribed is never delivered: only the latest is);
- rates in force: every step asked for the downlink rate of the allocation
  the client had applied last when the step began.

No I/O: give it fedsllm.trace.read_telemetry(run_dir / "trace").
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedsllm.telemetry.records import EventKind, Phase, TelemetryRecord

RATE_KEYS = ("uplink_bps", "downlink_bps", "bandwidth_hz")
"""Attributes an applied allocation must carry unchanged."""


@dataclass(frozen=True)
class PlanCheck:
    num_local_steps: int
    """The plan's n (-1: no plan event)."""
    num_rounds: int
    """The plan's N (-1: no plan event)."""
    num_clients: int
    """Clients that trained."""
    num_steps_checked: int
    """(client, round) pairs whose step count was compared."""
    num_allocations_checked: int
    """Applied allocations matched with the issued one."""
    num_rates_checked: int
    """Steps whose asked downlink rate was compared."""
    mismatches: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.num_local_steps >= 0 and not self.mismatches

    def summary(self) -> str:
        head = (
            f"plan n={self.num_local_steps} x N={self.num_rounds}, {self.num_clients} clients: "
            f"{self.num_steps_checked} client-rounds, {self.num_allocations_checked} "
            f"allocations, {self.num_rates_checked} step rates checked"
        )
        if self.ok:
            return head + ": all as planned"
        shown = "; ".join(self.mismatches[:5])
        more = f" (+{len(self.mismatches) - 5} more)" if len(self.mismatches) > 5 else ""
        return f"{head}: {len(self.mismatches)} mismatches: {shown}{more}"


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def check_plan(records: Iterable[TelemetryRecord], rtol: float = 1e-6) -> PlanCheck:
    """Compare the controller's plan and allocations with what the clients ran."""
    plan: TelemetryRecord | None = None
    issued: dict[tuple[int, int], TelemetryRecord] = {}
    """(client, version) -> allocation event."""
    applied: dict[int, list[TelemetryRecord]] = defaultdict(list)
    steps: Counter[tuple[int, int]] = Counter()
    asked: list[TelemetryRecord] = []
    for rec in records:
        if rec.event is EventKind.PLAN:
            plan = rec
        elif rec.event is EventKind.ALLOCATION:
            issued[(rec.client, int(rec.number("version")))] = rec
        elif rec.event is EventKind.RATES_APPLIED:
            applied[rec.client].append(rec)
        elif rec.phase is Phase.CLIENT_BACKWARD and rec.role == "client":
            steps[(rec.client, rec.round)] += 1
        elif rec.phase is Phase.WAIT_REPLY and rec.role == "client":
            asked.append(rec)
    mismatches: list[str] = []
    if plan is None:
        mismatches.append("no plan event")
        n_plan, rounds_plan = -1, -1
    else:
        n_plan = int(plan.number("num_local_steps"))
        rounds_plan = int(plan.number("num_rounds"))
    clients = sorted({k for k, _ in steps})
    rounds_run = sorted({r for _, r in steps})
    if plan is not None and rounds_run != list(range(rounds_plan)):
        mismatches.append(f"rounds trained {rounds_run}, plan has {rounds_plan}")

    # Local steps: the plan's n, the n of the allocation in force, and what ran.
    for (k, r), count in sorted(steps.items()):
        if plan is not None and count != n_plan:
            mismatches.append(f"client {k} round {r}: {count} steps, plan {n_plan}")
        in_force = [a for (c, _), a in issued.items() if c == k and a.round <= r]
        if in_force:
            latest = max(in_force, key=lambda a: a.number("version"))
            n_alloc = int(latest.number("num_local_steps"))
            if count != n_alloc:
                mismatches.append(f"client {k} round {r}: {count} steps, allocation {n_alloc}")

    # Each applied allocation is the issued one, unchanged; and each client ran
    # each round on the rates of the controller's latest allocation for it.
    num_allocations = 0
    for k, done in sorted(applied.items()):
        for got in done:
            version = int(got.number("version"))
            alloc = issued.get((k, version))
            if alloc is None:
                mismatches.append(f"client {k}: applied v{version}, never issued")
                continue
            num_allocations += 1
            for key in (*RATE_KEYS, "num_local_steps"):
                want, have = alloc.number(key), got.number(key)
                if not _close(want, have, rtol):
                    mismatches.append(
                        f"client {k} v{version}: {key} applied {have:g}, issued {want:g}"
                    )
    first_step: dict[tuple[int, int], float] = {}
    for step in asked:
        key = (step.client, step.round)
        first_step[key] = min(first_step.get(key, math.inf), step.t0)
    for (k, r), t in sorted(first_step.items()):
        latest = [a for (c, _), a in issued.items() if c == k and a.round <= r and a.t0 <= t]
        if not latest:
            continue
        want = max(latest, key=lambda a: a.number("version"))
        ran = [a for a in applied.get(k, []) if a.t0 <= t]
        if not ran:
            mismatches.append(f"client {k} round {r}: started before applying any allocation")
            continue
        have = max(ran, key=lambda a: (a.t0, a.number("version")))
        for key in RATE_KEYS:
            if not _close(want.number(key), have.number(key), rtol):
                mismatches.append(
                    f"client {k} round {r}: ran on v{int(have.number('version'))} "
                    f"{key} {have.number(key):g}, controller's v{int(want.number('version'))} "
                    f"{want.number(key):g}"
                )

    # Each step asked for the downlink rate in force when it began.
    num_rates = 0
    for step in asked:
        before = [a for a in applied.get(step.client, []) if a.t0 <= step.t0]
        want_bps = step.number("downlink_bps")
        if not before or math.isnan(want_bps):
            continue
        num_rates += 1
        in_force = max(before, key=lambda a: (a.t0, a.number("version")))
        have = in_force.number("downlink_bps")
        if want_bps != 0 and not _close(want_bps, have, rtol):
            mismatches.append(
                f"client {step.client} round {step.round} step {step.step}: asked "
                f"{want_bps:g} bit/s downlink, v{int(in_force.number('version'))} gives {have:g}"
            )
    return PlanCheck(
        num_local_steps=n_plan,
        num_rounds=rounds_plan,
        num_clients=len(clients),
        num_steps_checked=len(steps),
        num_allocations_checked=num_allocations,
        num_rates_checked=num_rates,
        mismatches=tuple(mismatches),
    )
