"""The sender delivers every record exactly once through outages, lost replies,
a full buffer and its own restart; it never blocks the caller on the network."""

from __future__ import annotations

import threading
from pathlib import Path

from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.sender import TelemetrySender
from tests.fedsllm.telemetry.helpers import FlakyPush, event, wait_for


def _steps(collector: TelemetryCollector) -> list[int]:
    return sorted(r.step for r in collector.records())


def _sender(push, tmp_path: Path, **kw) -> TelemetrySender:
    kw.setdefault("flush_interval_s", 0.01)
    kw.setdefault("backoff_s", 0.005)
    kw.setdefault("max_backoff_s", 0.02)
    return TelemetrySender(push, tmp_path / "spool", "client_0", **kw)


def test_everything_arrives_once_and_the_spool_empties(tmp_path: Path) -> None:
    collector = TelemetryCollector(tmp_path / "trace")
    sender = _sender(FlakyPush(collector), tmp_path, batch_records=7)
    for i in range(100):
        sender(event(i))
    assert sender.close(5.0)
    assert _steps(collector) == list(range(100))
    assert [r.seq for r in collector.records()] == list(range(1, 101))
    assert sender.spool_path.stat().st_size == 0
    assert collector.wait_final(0.0) == []  # the last push said final


def test_outage_and_lost_reply_neither_lose_nor_double(tmp_path: Path) -> None:
    collector = TelemetryCollector(tmp_path / "trace")
    push = FlakyPush(collector)
    sender = _sender(push, tmp_path, batch_records=5, max_buffered=8)
    push.down.set()
    for i in range(50):  # the buffer (8) overflows: the caller spills to the spool
        sender(event(i))
    wait_for(lambda: push.num_calls > 0)  # the sender tried, during the outage
    assert collector.records() == []
    assert sender.num_spilled > 0
    push.down.clear()
    push.lose_next_reply = True  # stored, but the sender does not hear so
    for i in range(50, 80):
        sender(event(i))
    assert sender.close(5.0)
    assert _steps(collector) == list(range(80))
    assert push.num_records_sent > 80  # some were resent and dropped as duplicates


def test_restarted_source_resends_unacked_and_continues_numbering(tmp_path: Path) -> None:
    collector = TelemetryCollector(tmp_path / "trace")
    push = FlakyPush(collector)
    first = _sender(push, tmp_path)
    for i in range(10):
        first(event(i))
    assert first.close(5.0)
    push.down.set()
    second = _sender(push, tmp_path)
    for i in range(10, 20):
        second(event(i))
    assert not second.close(0.1)  # collector unreachable: records stay in the spool
    push.down.clear()
    third = _sender(push, tmp_path)  # the same source starting again
    for i in range(20, 25):
        third(event(i))
    assert third.close(5.0)
    assert _steps(collector) == list(range(25))
    assert [r.seq for r in collector.records()] == list(range(1, 26))


def test_the_caller_never_waits_for_the_network(tmp_path: Path) -> None:
    """The push hangs (from the first record on) until the caller is done: a
    caller that waited for the network, even once, would never finish its 1000
    records (spills included)."""
    release = threading.Event()
    pushes_started = threading.Event()

    def hanging_push(records, final):
        pushes_started.set()
        release.wait(120)  # bounded: a sender that pushed on the caller's thread fails, not hangs
        raise ConnectionError("timeout")

    sender = _sender(hanging_push, tmp_path, max_buffered=64)

    def call(first: int, last: int) -> threading.Thread:
        caller = threading.Thread(target=lambda: [sender(event(i)) for i in range(first, last)])
        caller.start()
        return caller

    first = call(0, 1)
    hung = pushes_started.wait(10)  # the sender's thread is now stuck in the network
    first.join(timeout=10)
    rest = call(1, 1000)
    rest.join(timeout=60)
    finished = not first.is_alive() and not rest.is_alive()
    release.set()
    first.join()
    rest.join()
    sender.close(0.01)
    assert hung, "the sender never pushed"
    assert finished, "the caller waited for a push that was hanging"
