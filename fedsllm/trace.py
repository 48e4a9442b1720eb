"""Spans and events from every process, as JSON lines in the run directory.

Each process owns one `Tracer` writing RUN_DIR/trace/<role>.jsonl. Reports,
progress display and the run summary are computed from these records, not
from counters kept aside. Records are flushed line by line so a crashed
process still leaves what it did, and so the launcher can tail them live.

Record schema (one JSON object per line):
    kind   "span" | "event"
    role   "client" | "main_server" | "fed_server" | "launcher"
    client client id, -1 when not client-specific
    round  global round, -1 when not round-specific
    step   local iteration, -1 when not step-specific
    name   phase name (span) or event name (event)
    t0, t1 wall-clock seconds (time.time() + clock_offset_s); events: t0 == t1
    bytes  payload bytes of a transfer span, else 0
    extra  free-form dict (loss, num_tokens, overrun_s, ...)

Phase names: client_forward, uplink, server_compute, downlink,
client_backward, adapter_upload, aggregation, wait_global, global_download,
wait_reply, eval. wait_global (round r) is a client's wait for round r to
close (the slowest client's upload and the aggregation) until the fed server
starts sending the global adapter; global_download (round r + 1) is only that
transfer. wait_reply extra.downlink_bps is the rate the step asked the main
server to pace its gradient at (0 = not paced).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


@dataclass
class SpanHandle:
    """Lets the body of a span attach bytes and extra fields before it closes."""

    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Tracer:
    """Append-only JSON-lines recorder for one process.

    `clock_offset_s` is this process's estimated offset to the fed server's
    clock (0 on one host); it is added to every timestamp so that all
    processes' records share one time axis.
    """

    def __init__(
        self,
        path: Path | None,
        role: str,
        client_id: int = -1,
        clock: Callable[[], float] = time.time,
        clock_offset_s: float = 0.0,
    ) -> None:
        self.role = role
        self.client_id = client_id
        self.clock = clock
        self.clock_offset_s = clock_offset_s
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def now(self) -> float:
        return self.clock() + self.clock_offset_s

    def _write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        line = json.dumps(record, separators=(",", ":"), default=_jsonable)
        with self._lock:
            # Checked again under the lock: a handler thread still running after
            # its server stopped may write while close() runs.
            if self._fh is not None:
                self._fh.write(line + "\n")

    def record(
        self,
        kind: str,
        name: str,
        t0: float,
        t1: float,
        *,
        round: int = -1,
        step: int = -1,
        bytes: int = 0,
        client: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._write(
            {
                "kind": kind,
                "role": self.role,
                "client": self.client_id if client is None else client,
                "round": round,
                "step": step,
                "name": name,
                "t0": t0,
                "t1": t1,
                "bytes": bytes,
                "extra": extra or {},
            }
        )

    @contextmanager
    def span(
        self,
        name: str,
        *,
        round: int = -1,
        step: int = -1,
        bytes: int = 0,
        client: int | None = None,
    ) -> Iterator[SpanHandle]:
        handle = SpanHandle(bytes=bytes)
        t0 = self.now()
        try:
            yield handle
        finally:
            self.record(
                "span",
                name,
                t0,
                self.now(),
                round=round,
                step=step,
                bytes=handle.bytes,
                client=client,
                extra=handle.extra,
            )

    def event(
        self, name: str, *, round: int = -1, step: int = -1, client: int | None = None, **extra: Any
    ) -> None:
        t = self.now()
        self.record("event", name, t, t, round=round, step=step, client=client, extra=extra)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _jsonable(value: Any) -> Any:
    """Dataclasses (device step records, allocations) are written as their fields, numpy
    scalars (solver outputs) as the Python numbers they hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    import numpy

    if isinstance(value, numpy.generic):
        return value.item()
    return str(value)


def read_records(trace_dir: Path) -> list[dict[str, Any]]:
    """All records of a run, sorted by start time; torn last lines are skipped."""
    records: list[dict[str, Any]] = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a process died mid-line; the rest is still valid
    records.sort(key=lambda r: r["t0"])
    return records


class TraceTail:
    """Incrementally reads new complete lines from every trace file (for live progress)."""

    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = trace_dir
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.trace_dir.exists():
            return out
        for path in sorted(self.trace_dir.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n")
            if end < 0:
                continue
            for line in data[: end + 1].splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            self._offsets[path] = offset + end + 1
        return out
