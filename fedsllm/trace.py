"""Spans and events from every process, as typed telemetry records.

Each process owns one `Tracer`. Every span and event becomes a
fedsllm.telemetry.records.TelemetryRecord (one schema, defined in
proto/fedsllm/proto/telemetry.proto and versioned): its name must be a known
phase or event, and its attributes are sorted into typed maps. The Tracer
hands the record to a `sink`: in the client and the main server a
fedsllm.telemetry.sender.TelemetrySender, which streams it to the fed
server's collector; in the fed server the collector itself. The collector
keeps the whole run in RUN_DIR/trace/<source>.jsonl; reports, progress
display and the run summary are computed from those records, not from
counters kept aside. A Tracer given a `path` also writes its records there
as JSON lines (a process that runs without a collector, such as
`python -m fed_server.controller_main`).

JSON form of a record (TelemetryRecord.to_dict, one object per line):
    schema version of the record schema (fedsllm.telemetry.records.SCHEMA_VERSION)
    source emitting process: "client_<k>", "main_server", "fed_server", ...
    seq    per-source sequence number (1, 2, ...; 0 in a local file)
    kind   "span" | "event"
    role   "client" | "main_server" | "fed_server" | "controller" | "launcher"
    client client id, -1 when not client-specific
    round  global round, -1 when not round-specific
    step   local iteration, -1 when not step-specific
    name   phase name (span) or event name (event)
    t0, t1 wall-clock seconds (time.time() + clock_offset_s); events: t0 == t1
    bytes  payload bytes of a transfer span, else 0
    extra  the typed attributes (loss, num_tokens, device, overrun_s, ...)

Phase names (fedsllm.telemetry.records.PHASES): client_forward, uplink,
server_compute, downlink, client_backward, adapter_upload, aggregation,
wait_global, global_download, wait_reply, eval. wait_global (round r) is a
client's wait for round r to close (the slowest client's upload and the
aggregation) until the fed server starts sending the global adapter;
global_download (round r + 1) is only that transfer. wait_reply
extra.downlink_bps is the rate the step asked the main server to pace its
gradient at (0 = not paced). Event names: fedsllm.telemetry.records.EVENTS.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedsllm.telemetry.records import TelemetryRecord, check_role, from_dict, make_record


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
        sink: Callable[[TelemetryRecord], None] | None = None,
    ) -> None:
        check_role(role)
        self.role = role
        self.client_id = client_id
        self.clock = clock
        self.clock_offset_s = clock_offset_s
        self.sink = sink
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def now(self) -> float:
        return self.clock() + self.clock_offset_s

    def _write(self, record: TelemetryRecord) -> None:
        if self._fh is None:
            return
        line = json.dumps(record.to_dict(), separators=(",", ":"))
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
        """One span or event; ValueError when `name` is not a known phase or event."""
        rec = make_record(
            kind,
            name,
            self.role,
            source_client=self.client_id if self.role == "client" else -1,
            client=self.client_id if client is None else client,
            round=round,
            step=step,
            t0=t0,
            t1=t1,
            bytes=bytes,
            extra=extra,
        )
        if self.sink is not None:
            self.sink(rec)
        self._write(rec)

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


def read_telemetry(trace_dir: Path) -> list[TelemetryRecord]:
    """Every record of a run's trace/ as typed records, sorted by start time.

    A line that is not JSON (a process killed mid-write) is skipped. A record
    this schema cannot read (an unknown phase or event name, a newer schema, a
    missing field) is refused: ConfigError naming its file and line. A file
    from before records named their source gets its name from the file.
    """
    from fedsllm.errors import ConfigError

    records: list[TelemetryRecord] = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a process died mid-line; the rest is still valid
                try:
                    doc.setdefault("source", path.stem)
                    records.append(from_dict(doc))
                except (AttributeError, KeyError, TypeError, ValueError) as err:
                    what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
                    reason = f"unreadable telemetry record: {what}"
                    raise ConfigError(f"{path}:{lineno}", line.strip()[:200], reason) from err
    records.sort(key=lambda r: r.t0)
    return records


def read_records(trace_dir: Path) -> list[dict[str, Any]]:
    """All records of a run in their JSON form (TelemetryRecord.to_dict), sorted
    by start time, read through the typed schema (read_telemetry). For tests and
    tools that look at raw records; the summary, the report and the experiments
    read the typed records."""
    return [r.to_dict() for r in read_telemetry(trace_dir)]
