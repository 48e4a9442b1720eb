"""A role's telemetry sender: off the training path, spooled, exactly once.

The Tracer hands each record to `TelemetrySender.__call__`, which only numbers
it (seq 1, 2, 3, ... per source) and appends it to a bounded in-memory buffer.
A background thread moves the buffer to an append-only spool file in the
role's own directory and pushes the spool to the collector in batches (by
size, or every `flush_interval_s`). When the buffer is full because the
thread is behind (the collector is slow or gone), the caller spills the
buffer to the spool itself: nothing is ever dropped and memory stays bounded.

A push that fails (collector unreachable or restarting) is retried with
capped exponential backoff from the same spool position; the collector drops
records it already holds, so a batch whose reply was lost is resent safely.
The spool is emptied once the collector acknowledges everything in it, and
the highest acknowledged seq is kept beside it (SOURCE.acked), so a restarted
source continues its numbering and first resends what was never
acknowledged.

Spool format: records as length-prefixed (4-byte little-endian)
fedsllm.proto.TelemetryRecord messages; a torn tail is cut on start.
Transport is injected (`push`), so this module does not import grpc.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.telemetry.codec import record_to_proto
from fedsllm.telemetry.records import TelemetryRecord

log = logging.getLogger(__name__)

Push = Callable[[Sequence[pb.TelemetryRecord], bool], int]
"""push(records, final) -> highest contiguous seq the collector holds for the
source; raises on any failure (the sender retries)."""

_LEN = struct.Struct("<I")


class TelemetrySender:
    """Numbers, buffers, spools and pushes one source's records (see module doc)."""

    def __init__(
        self,
        push: Push,
        spool_dir: Path,
        source: str,
        *,
        max_buffered: int = 4096,
        batch_records: int = 512,
        flush_interval_s: float = 0.25,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
    ) -> None:
        if max_buffered < 1 or batch_records < 1:
            raise ValueError(
                f"max_buffered and batch_records must be >= 1, got {max_buffered}, {batch_records}"
            )
        self.push = push
        self.source = source
        self.max_buffered = max_buffered
        self.batch_records = batch_records
        self.flush_interval_s = flush_interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_path = spool_dir / f"{source}.spool"
        self.acked_path = spool_dir / f"{source}.acked"

        self._lock = threading.Lock()  # seq and buffer (the caller's side)
        self._buffer: list[tuple[int, TelemetryRecord]] = []
        self._spool_lock = threading.Lock()  # spool file writes and truncation
        self._wake = threading.Event()
        self._closing = False
        self._abandoned = False
        self._delivered = threading.Event()
        self.num_spilled = 0
        """Records the caller had to write to the spool itself (buffer full)."""
        self.num_pushes = 0
        self.num_failed_pushes = 0

        acked, max_seq, size = self._recover()
        self.acked_seq = acked
        self._max_seq_written = max_seq
        self._next_seq = max(acked, max_seq) + 1
        self._send_offset = 0  # everything in the spool is resent once on start
        self._rewound_at = -1
        self._spool_size = size
        self._spool = open(self.spool_path, "ab")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name=f"telemetry-{source}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ caller side
    def __call__(self, record: TelemetryRecord) -> None:
        """Take one record (the Tracer's sink). Never blocks on the network."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._buffer.append((seq, record))
            full = len(self._buffer) >= self.max_buffered
            batch = len(self._buffer) >= self.batch_records
            spill = self._take_locked() if full else None
        if spill:
            self.num_spilled += len(spill)
            self._write_spool(spill)
        if batch or full:
            self._wake.set()

    def close(self, timeout_s: float = 10.0) -> bool:
        """Push what is left and tell the collector this source is done; wait up
        to `timeout_s`. True when everything was acknowledged; otherwise the
        rest stays in the spool for the next start of this source."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        done = self._delivered.is_set()
        if not done:
            self._abandoned = True  # the thread ends after its current push
            log.warning(
                "telemetry %s: collector did not acknowledge everything within %.1f s; "
                "%d bytes left in %s",
                self.source,
                timeout_s,
                self._spool_size - self._send_offset,
                self.spool_path,
            )
        return done

    # ------------------------------------------------------------ spool
    def _take_locked(self) -> list[tuple[int, TelemetryRecord]]:
        items, self._buffer = self._buffer, []
        return items

    def _write_spool(self, items: list[tuple[int, TelemetryRecord]]) -> None:
        parts = []
        for seq, record in items:
            msg = record_to_proto(record)
            msg.seq = seq
            data = msg.SerializeToString()
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        blob = b"".join(parts)
        with self._spool_lock:
            self._spool.write(blob)
            self._spool.flush()
            self._spool_size += len(blob)
            self._max_seq_written = max(self._max_seq_written, max(s for s, _ in items))

    def _read_spool(self, offset: int, limit: int) -> tuple[list[pb.TelemetryRecord], int]:
        """Up to `limit` records from `offset`; returns them and the offset after.
        Reads record by record, so a long outage's spool is not re-read whole."""
        with self._spool_lock:
            end = self._spool_size
        out: list[pb.TelemetryRecord] = []
        pos = offset
        with open(self.spool_path, "rb") as fh:
            fh.seek(offset)
            while pos + _LEN.size <= end and len(out) < limit:
                (n,) = _LEN.unpack(fh.read(_LEN.size))
                msg = pb.TelemetryRecord.FromString(fh.read(n))
                pos += _LEN.size + n
                if msg.seq > self.acked_seq:
                    out.append(msg)
        return out, pos

    def _recover(self) -> tuple[int, int, int]:
        """(acked seq, highest seq in the spool, spool size) left by an earlier
        run of this source; a torn last record is cut."""
        acked = 0
        if self.acked_path.exists():
            try:
                acked = int(self.acked_path.read_text().strip() or 0)
            except ValueError:
                log.warning(
                    "telemetry %s: unreadable %s; counting from 0", self.source, self.acked_path
                )
        max_seq = 0
        good = 0
        if self.spool_path.exists():
            data = self.spool_path.read_bytes()
            pos = 0
            while pos + _LEN.size <= len(data):
                (n,) = _LEN.unpack_from(data, pos)
                if pos + _LEN.size + n > len(data):
                    break
                try:
                    msg = pb.TelemetryRecord.FromString(data[pos + _LEN.size : pos + _LEN.size + n])
                except Exception:  # noqa: BLE001 - a torn or garbled record: stop here
                    break
                max_seq = max(max_seq, msg.seq)
                pos += _LEN.size + n
            good = pos
            if good < len(data):
                with open(self.spool_path, "r+b") as fh:
                    fh.truncate(good)
            if good:
                log.info(
                    "telemetry %s: %d spooled bytes from an earlier start to resend",
                    self.source,
                    good,
                )
        return acked, max_seq, good

    def _save_acked(self) -> None:
        tmp = self.acked_path.with_suffix(".acked.tmp")
        # The numbering's high-water mark: a restarted source continues after it.
        tmp.write_text(f"{max(self.acked_seq, self._max_seq_written)}\n")
        os.replace(tmp, self.acked_path)

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        delay_s = self.backoff_s
        failing = 0
        while not self._abandoned:
            closing = self._closing
            with self._lock:
                items = self._take_locked()
            if items:
                self._write_spool(items)
            try:
                state = self._step(final=closing)
            except Exception as err:  # noqa: BLE001 - any failure: keep the spool, retry
                self.num_failed_pushes += 1
                failing += 1
                # Once per outage at WARNING (a refused batch would repeat forever:
                # say so), then quietly while it lasts.
                log.log(
                    logging.WARNING if failing == 1 else logging.DEBUG,
                    "telemetry %s: push failed (%s); spooling and retrying every <= %.1f s",
                    self.source,
                    _short(err),
                    self.max_backoff_s,
                )
                self._wake.wait(delay_s)
                self._wake.clear()
                delay_s = min(self.max_backoff_s, delay_s * 2)
                continue
            delay_s = self.backoff_s
            if failing:
                log.info(
                    "telemetry %s: collector reachable again after %d failed pushes",
                    self.source,
                    failing,
                )
                failing = 0
            if state == "done":
                self._delivered.set()
                return
            if state == "idle":
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()

    def _step(self, final: bool) -> str:
        """Push one batch from the spool. Returns "more" (call again now), "idle"
        (all sent and acknowledged) or "done" (with `final`: the last push,
        marked final, was acknowledged)."""
        records, after = self._read_spool(self._send_offset, self.batch_records)
        with self._spool_lock:
            at_end = after >= self._spool_size
        if not records and not (final and at_end):
            self._send_offset = after  # skipped only records acknowledged before
            if not at_end:
                return "more"
            self._truncate_sent()
            return "idle"
        acked = self.push(records, final and at_end)
        self.num_pushes += 1
        self.acked_seq = max(self.acked_seq, acked)
        self._send_offset = after
        if not at_end:
            return "more"
        if self.acked_seq < self._max_seq_written and self._rewound_at != self.acked_seq:
            # The collector lacks a record we sent (a spill spooled records out
            # of order, or it lost them): resend the spool once more.
            self._rewound_at = self.acked_seq
            self._send_offset = 0
            return "more"
        if self.acked_seq < self._max_seq_written:
            log.warning(
                "telemetry %s: collector holds up to seq %d of %d after a resend",
                self.source,
                self.acked_seq,
                self._max_seq_written,
            )
        self._truncate_sent()
        return "done" if final else "idle"

    def _truncate_sent(self) -> None:
        """Empty the spool once everything in it was pushed and acknowledged."""
        with self._spool_lock:
            if self._send_offset < self._spool_size:
                return  # a spill landed meanwhile
            if self._spool_size:
                self._save_acked()
                self._spool.truncate(0)
                self._spool.seek(0)
                self._spool_size = 0
            self._send_offset = 0


def _short(err: Exception) -> str:
    """One line for a log: a gRPC error's code and details, else the message."""
    code = getattr(err, "code", None)
    details = getattr(err, "details", None)
    if callable(code) and callable(details):
        return f"{code()}: {details()}"
    return f"{type(err).__name__}: {err}"
