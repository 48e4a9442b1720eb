"""The collector stores each (source, seq) once, survives its own restart from its
files, and feeds watchers; no grpc here."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fedsllm.telemetry.collector import TelemetryCollector
from tests.fedsllm.telemetry.helpers import event


def _seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def test_duplicates_are_dropped_and_ack_is_contiguous(tmp_path: Path) -> None:
    c = TelemetryCollector(tmp_path)
    recs = [event(i).numbered(i + 1) for i in range(6)]
    assert c.store(recs[:2]) == 2
    assert c.store([recs[4], recs[3]]) == 2  # out of order: a gap at seq 3
    assert c.store([recs[2], recs[0], recs[1]]) == 5  # resent ones are not doubled
    assert c.store(recs) == 6
    assert sorted(_seqs(tmp_path / "client_0.jsonl")) == [1, 2, 3, 4, 5, 6]
    assert len(c.records()) == 6


def test_mixed_sources_and_bad_seq_are_refused_before_storing(tmp_path: Path) -> None:
    c = TelemetryCollector(tmp_path)
    with pytest.raises(ValueError, match="mixes sources"):
        c.store([event(0, client=0).numbered(1), event(0, client=1).numbered(1)])
    with pytest.raises(ValueError, match="seq"):
        c.store([event(0).numbered(1), event(1)])  # seq 0: never numbered
    assert c.records() == [] and c.acked("client_0") == 0


def test_restart_resumes_from_files_and_cuts_a_torn_line(tmp_path: Path) -> None:
    c = TelemetryCollector(tmp_path)
    c.store([event(i).numbered(i + 1) for i in range(3)])
    c.emit_local(event(0, role="fed_server"))
    c.close()
    with open(tmp_path / "client_0.jsonl", "a") as fh:
        fh.write('{"schema":1,"source":"client_0","seq":4,"ki')  # killed mid-line
    again = TelemetryCollector(tmp_path)
    assert again.acked("client_0") == 3 and again.acked("fed_server") == 1
    assert again.store([event(i).numbered(i + 1) for i in range(5)]) == 5
    again.emit_local(event(1, role="fed_server"))
    again.close()
    assert _seqs(tmp_path / "client_0.jsonl") == [1, 2, 3, 4, 5]
    assert _seqs(tmp_path / "fed_server.jsonl") == [1, 2]


def test_watchers_get_old_then_new_records_and_end_on_close(tmp_path: Path) -> None:
    c = TelemetryCollector(None)
    c.store([event(0).numbered(1)])
    got: list[int] = []

    def watch() -> None:
        index = 0
        while True:
            recs, closed = c.wait_from(index, timeout_s=5.0)
            got.extend(r.seq for r in recs)
            index += len(recs)
            if closed and not recs:
                return

    t = threading.Thread(target=watch)
    t.start()
    c.store([event(1).numbered(2), event(2).numbered(3)])
    c.close()
    t.join(5.0)
    assert not t.is_alive() and got == [1, 2, 3]


def test_wait_final_waits_only_for_sources_still_open(tmp_path: Path) -> None:
    c = TelemetryCollector(None)
    c.store([event(0, client=0).numbered(1)], final=True)
    c.store([event(0, client=1).numbered(1)])
    assert c.wait_final(0.05) == ["client_1"]
    threading.Timer(0.05, lambda: c.finish("client_1")).start()
    assert c.wait_final(5.0) == []


def test_wait_final_gives_up_on_a_silent_source(tmp_path: Path) -> None:
    c = TelemetryCollector(None)
    c.store([event(0, client=0).numbered(1)])  # then killed: never says it is done
    t0 = time.monotonic()
    assert c.wait_final(30.0, idle_s=0.2) == ["client_0"]
    waited = time.monotonic() - t0
    assert waited >= 0.2  # the source's idle time
    assert waited < 15.0  # not the timeout: it gave up on the silent source
