"""Perform a run's faults against the processes a launcher owns.

`FaultExecutor.poll(now_s, round_index)` fires every fault whose trigger
has come (a time since the run started, or a round the fed server opened)
and performs every action that is due, through `FaultOps`: callables the
launcher supplies to find a role's pid, signal it, restart the role, and
cut or restore its links. So the executor is tested without processes, and
it never signals anything the launcher does not hand it (never by name).

An action that fails (the process already gone) is recorded with its error
and the run goes on: a fault harness must not be what stops a run. The
records (`events`, `summary()`) say what was injected and when; whether the
run survived it is for the launcher and the report to add.
"""

from __future__ import annotations

import heapq
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsllm.faults.kinds import Action, Fault

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultOps:
    pid_of: Callable[[str], int | None]
    """Launcher name (client_1, main_server, fed_server) -> pid it owns, or None."""
    restart: Callable[[str], None]
    """Start the named role again (waiting for the old process to be gone first)."""
    set_outage: Callable[[str, bool], None]
    """Cut (True) or restore (False) every link of the named role."""
    send_signal: Callable[[int, int], None] = os.kill
    """(pid, signum); os.kill in a run."""


@dataclass(frozen=True)
class FaultEvent:
    fault_index: int
    fault: str
    """The fault's canonical spec text."""
    action: str
    due_s: float
    """When the action was due, seconds since the run started."""
    done_s: float
    """When it was performed (the poll's now_s)."""
    round: int | None
    """The round current at that poll, when known."""
    error: str | None = None
    label: str = ""
    """What was done, without target or time: "signal SIGKILL", "restart", "link down"."""
    target: str = ""
    """The launcher's name of the target: client_1, main_server, fed_server."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """For RUN_DIR/faults.json and summary.json: the fields, `action` the label."""
        return {
            "fault": self.fault,
            "action": self.label,
            "target": self.target,
            "detail": self.action,
            "at_s": self.done_s,
            "due_s": self.due_s,
            "round": self.round,
            "error": self.error,
            "ok": self.ok,
        }


@dataclass(order=True)
class _Due:
    due_s: float
    fault_index: int
    order: int
    action: Action = field(compare=False)


class FaultExecutor:
    def __init__(self, faults: Sequence[Fault], ops: FaultOps) -> None:
        self.faults = list(faults)
        self.ops = ops
        self.fired_at: list[float | None] = [None] * len(self.faults)
        """Per fault: when it triggered (None: not yet)."""
        self.events: list[FaultEvent] = []
        self._queue: list[_Due] = []
        self._perform: dict[str, Callable[[Action], None]] = {
            "signal": self._signal,
            "restart": lambda a: self.ops.restart(a.target.name),
            "outage": lambda a: self.ops.set_outage(a.target.name, bool(a.on)),
        }

    # ------------------------------------------------------------ queries
    @property
    def done(self) -> bool:
        return all(t is not None for t in self.fired_at) and not self._queue

    def restart_pending(self, name: str) -> bool:
        """Whether a fault that has fired will still restart `name` (its restart
        action queued, not performed yet): the death it caused is then
        expected, not a failure. Asked from the supervisor's thread: it reads a
        copy of the queue (one atomic list copy), and poll takes an action off
        the queue only once it is performed, so there is no moment when the
        restart is neither queued nor done."""
        return any(
            d.action.op == "restart" and d.action.target.name == name for d in list(self._queue)
        )

    def next_due_s(self) -> float | None:
        """The earliest time-triggered fault or pending action (None: only rounds left)."""
        times = [d.due_s for d in self._queue[:1]]
        times += [
            f.trigger.at_s
            for f, t in zip(self.faults, self.fired_at, strict=True)
            if t is None and f.trigger.at_s is not None
        ]
        return min(times, default=None)

    # ------------------------------------------------------------ commands
    def _signal(self, action: Action) -> None:
        pid = self.ops.pid_of(action.target.name)
        if pid is None:
            raise ProcessLookupError(f"{action.target.name} is not running")
        self.ops.send_signal(pid, int(action.signum or signal.SIGKILL))

    def poll(self, now_s: float, round_index: int | None = None) -> list[FaultEvent]:
        """Fire what has triggered, perform what is due; returns this poll's events."""
        for i, fault in enumerate(self.faults):
            if self.fired_at[i] is not None:
                continue
            trig = fault.trigger
            if trig.at_s is not None and now_s >= trig.at_s:
                base = trig.at_s  # a late poll keeps the spec's spacing
            elif trig.round is not None and round_index is not None and round_index >= trig.round:
                base = now_s
            else:
                continue
            self.fired_at[i] = base
            log.warning("fault %d triggered: %s", i, fault.text())
            for order, action in enumerate(fault.actions()):
                heapq.heappush(self._queue, _Due(base + action.offset_s, i, order, action))
        new: list[FaultEvent] = []
        while self._queue and self._queue[0].due_s <= now_s:
            item = self._queue[0]
            error = None
            try:
                self._perform[item.action.op](item.action)
            except Exception as err:  # a harness failure is recorded, never fatal
                error = f"{type(err).__name__}: {err}"
                log.warning("fault %d: %s failed: %s", item.fault_index, item.action.text(), error)
            heapq.heappop(self._queue)  # only now: restart_pending saw it until it was done
            event = FaultEvent(
                fault_index=item.fault_index,
                fault=self.faults[item.fault_index].text(),
                action=item.action.text(),
                due_s=item.due_s,
                done_s=now_s,
                round=round_index,
                error=error,
                label=item.action.label(),
                target=item.action.target.name,
            )
            new.append(event)
        self.events += new
        return new

    def run(
        self,
        stop: threading.Event,
        now_s: Callable[[], float],
        round_index: Callable[[], int | None],
        interval_s: float = 0.2,
    ) -> None:
        """Poll until every fault is done or `stop` is set (the launcher's thread body)."""
        while not stop.is_set() and not self.done:
            self.poll(now_s(), round_index())
            stop.wait(interval_s)

    def summary(self) -> list[dict[str, Any]]:
        """Per fault: its spec, when it fired, and each action with its outcome."""
        return [
            {
                "fault": fault.text(),
                "fired_at_s": self.fired_at[i],
                "actions": [
                    {"action": e.action, "at_s": e.done_s, "round": e.round, "error": e.error}
                    for e in self.events
                    if e.fault_index == i
                ],
            }
            for i, fault in enumerate(self.faults)
        ]
