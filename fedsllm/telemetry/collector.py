"""The fed server's telemetry collector: every record of the run, each exactly once.

Records arrive from many sources (the roles' senders, and the fed server's own
Tracer directly). Each source numbers its records 1, 2, 3, ...; the collector
keeps, per source, the highest seq up to which it holds everything (the ack a
sender is told) and the seqs it holds above that, and drops any record it
already holds, so a resend after a lost reply or a restart never doubles one.
Stored records are appended to TRACE_DIR/<source>.jsonl (the JSON form of
fedsllm.telemetry.records, flushed before the ack, so an acked record survives a
collector restart) and to an in-memory log that watchers follow from any
index. A restarted collector rebuilds both from those files (the log in start
time order, under a new `instance_id`, since its indexes are not the old ones).

No grpc and no protobuf here (fedsllm.telemetry.service is the servicer).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fedsllm.errors import StateError
from fedsllm.telemetry.records import TelemetryRecord, from_dict

log = logging.getLogger(__name__)


@dataclass
class _Source:
    contiguous: int = 0
    """Every seq in 1..contiguous is stored."""
    above: set[int] = field(default_factory=set)
    """Stored seqs above `contiguous` (they arrived out of order)."""
    fh: TextIO | None = None
    final: bool = False
    """The source said it sends nothing more."""
    live: bool = False
    """It pushed to this collector (not only to one before a restart)."""
    last_push: float = 0.0
    """time.monotonic() of its last push to this collector."""

    def holds(self, seq: int) -> bool:
        return seq <= self.contiguous or seq in self.above

    def add(self, seq: int) -> None:
        self.above.add(seq)
        while self.contiguous + 1 in self.above:
            self.contiguous += 1
            self.above.discard(self.contiguous)


class TelemetryCollector:
    """Stores each (source, seq) once, per source in trace_dir, and feeds watchers.

    `trace_dir` None keeps records in memory only (tests, tools). Thread-safe.
    """

    def __init__(self, trace_dir: Path | None) -> None:
        self.trace_dir = trace_dir
        self.instance_id = uuid.uuid4().hex
        """Differs between two collectors of one run (log indexes differ too)."""
        self._cond = threading.Condition()
        self._sources: dict[str, _Source] = {}
        self._log: list[TelemetryRecord] = []
        self._closed = False
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
            self._reload(trace_dir)

    # ------------------------------------------------------------ storing
    def store(self, records: Sequence[TelemetryRecord], final: bool = False) -> int:
        """Store the records not held yet; returns the source's contiguous seq.

        All records must come from one source and carry seq >= 1 (ValueError
        otherwise, before anything is stored); StateError once closed. An
        empty batch returns 0 (use `finish` to close a source with nothing left).
        """
        sources = {r.source for r in records}
        if len(sources) > 1:
            raise ValueError(f"a telemetry batch mixes sources {sorted(sources)}")
        bad = [r.seq for r in records if r.seq < 1]
        if bad:
            raise ValueError(f"telemetry seq must be >= 1, got {bad[0]}")
        if not sources:
            return 0
        (name,) = sources
        with self._cond:
            if self._closed:
                raise StateError("the telemetry collector is closed (the run is ending)")
            src = self._source(name)
            src.live = True
            src.last_push = time.monotonic()
            new = False
            for rec in records:
                if src.holds(rec.seq):
                    continue
                self._write(name, src, rec)
                src.add(rec.seq)
                self._log.append(rec)
                new = True
            if src.fh is not None:
                src.fh.flush()  # before the ack: an acked record must survive a restart
            if final:
                src.final = True
            if new or final:
                self._cond.notify_all()
            return src.contiguous

    def finish(self, source: str) -> int:
        """Mark `source` done (its sender closed with nothing left); returns its ack."""
        with self._cond:
            src = self._source(source)
            src.final = True
            self._cond.notify_all()
            return src.contiguous

    def emit_local(self, record: TelemetryRecord) -> None:
        """Number and store a record of a source living in this process (the fed
        server's own Tracer): the next seq after what the collector holds."""
        with self._cond:
            if self._closed:
                return  # a handler thread still running after shutdown
            name = record.source
            src = self._source(name)
            rec = record.numbered(src.contiguous + 1)
            self._write(name, src, rec)
            src.add(rec.seq)
            self._log.append(rec)
            if src.fh is not None:
                src.fh.flush()
            self._cond.notify_all()

    def acked(self, source: str) -> int:
        with self._cond:
            src = self._sources.get(source)
            return 0 if src is None else src.contiguous

    # ------------------------------------------------------------ reading
    def records(self) -> list[TelemetryRecord]:
        """A copy of every record held, in storage order."""
        with self._cond:
            return list(self._log)

    def wait_from(self, index: int, timeout_s: float) -> tuple[list[TelemetryRecord], bool]:
        """Records from `index` on, waiting up to `timeout_s` for one when there
        are none yet; the flag is True once the collector is closed."""
        with self._cond:
            if len(self._log) <= index and not self._closed:
                self._cond.wait(timeout_s)
            return self._log[index:], self._closed

    def wait_final(
        self, timeout_s: float, exclude: Sequence[str] = (), idle_s: float = math.inf
    ) -> list[str]:
        """Wait until every source that pushed to this collector (but `exclude`)
        has said it is done, or `timeout_s` passes, or every source still open
        has been silent for `idle_s` (since its last push or the start of this
        wait: a killed role never says it is done); returns those still open."""
        start = time.monotonic()
        deadline = start + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                open_ = {
                    n: s
                    for n, s in self._sources.items()
                    if s.live and not s.final and n not in exclude
                }
                quiet = all(now - max(s.last_push, start) >= idle_s for s in open_.values())
                if not open_ or now >= deadline or quiet:
                    return sorted(open_)
                self._cond.wait(min(deadline - now, 0.1))

    def close(self) -> None:
        """Close the files and end every watcher's wait."""
        with self._cond:
            self._closed = True
            for src in self._sources.values():
                if src.fh is not None:
                    src.fh.close()
                    src.fh = None
            self._cond.notify_all()

    # ------------------------------------------------------------ internals
    def _source(self, name: str) -> _Source:
        src = self._sources.get(name)
        if src is None:
            src = self._sources[name] = _Source()
        if src.fh is None and self.trace_dir is not None and not self._closed:
            src.fh = open(self.trace_dir / f"{name}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        return src

    def _write(self, name: str, src: _Source, rec: TelemetryRecord) -> None:
        if src.fh is not None:
            src.fh.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")

    def _reload(self, trace_dir: Path) -> None:
        """Rebuild the per-source state and the log from the files a previous
        collector of this run wrote (records without a seq are not ours)."""
        loaded: list[TelemetryRecord] = []
        for path in sorted(trace_dir.glob("*.jsonl")):
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                # A collector killed mid-line: cut the torn tail, or the next
                # append would join it and spoil a good record too.
                with open(path, "r+b") as fh:
                    fh.truncate(end)
            for line in data[:end].decode("utf-8", errors="replace").splitlines():
                try:
                    doc = json.loads(line)
                    rec = from_dict(doc)
                except (json.JSONDecodeError, KeyError, ValueError):
                    continue  # not a record of this schema
                if rec.seq < 1 or rec.source != path.stem:
                    continue
                src = self._sources.setdefault(rec.source, _Source())
                if src.holds(rec.seq):
                    continue
                src.add(rec.seq)
                loaded.append(rec)
        loaded.sort(key=lambda r: r.t0)
        self._log = loaded
        if loaded:
            log.info(
                "telemetry: resumed with %d records from %d sources in %s",
                len(loaded),
                len(self._sources),
                trace_dir,
            )
