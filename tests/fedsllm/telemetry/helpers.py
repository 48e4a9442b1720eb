"""Records and transports shared by the telemetry tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.telemetry.codec import record_from_proto
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.records import TelemetryRecord, make_record


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Return once `predicate()` holds; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def event(i: int, client: int = 0, role: str = "client") -> TelemetryRecord:
    """A train_loss event whose step is `i`, to tell records apart."""
    return make_record(
        "event",
        "train_loss",
        role,
        source_client=client if role == "client" else -1,
        client=client,
        round=0,
        step=i,
        t0=1000.0 + i,
        t1=1000.0 + i,
        bytes=0,
        extra={"loss": 1.0 / (i + 1), "num_tokens": 8},
    )


class FlakyPush:
    """A push into a collector that can be made to fail (collector unreachable),
    or to store a batch and then fail (the reply is lost)."""

    def __init__(self, collector: TelemetryCollector) -> None:
        self.collector = collector
        self.down = threading.Event()
        self.lose_next_reply = False
        self.num_calls = 0
        self.num_records_sent = 0

    def __call__(self, records: Sequence[pb.TelemetryRecord], final: bool) -> int:
        self.num_calls += 1
        if self.down.is_set():
            raise ConnectionError("collector unreachable")
        decoded = [record_from_proto(m) for m in records]
        self.num_records_sent += len(decoded)
        acked = self.collector.store(decoded, final=final) if decoded else 0
        if not decoded and final:
            acked = self.collector.finish("client_0")
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise ConnectionError("reply lost")
        return acked
