"""The Tracer emits typed records to its sink, and fedsllm.trace reads a run's
collected trace back through the typed schema (legacy files included)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedsllm.device import StepRecord
from fedsllm.errors import ConfigError
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.records import EVENTS, PHASES, EventKind, Phase, from_dict
from fedsllm.trace import Tracer, read_records, read_telemetry


def test_tracer_hands_typed_records_to_its_sink() -> None:
    got = []
    ticks = iter([10.0, 10.5, 11.0, 12.0])
    tracer = Tracer(None, "client", client_id=3, clock=lambda: next(ticks), sink=got.append)
    with tracer.span("client_forward", round=1, step=2) as span:
        span.bytes = 99
        span.extra["device"] = StepRecord("fwd", 1e6, 0.5, 0.25, 0.25, 0.0, True)
    tracer.event("train_loss", round=1, step=2, loss=2.5, num_tokens=64)
    span_rec, loss = got
    assert (span_rec.kind, span_rec.name, span_rec.source, span_rec.client) == (
        "span",
        "client_forward",
        "client_3",
        3,
    )
    assert (span_rec.t0, span_rec.t1, span_rec.bytes) == (10.0, 10.5, 99)
    assert span_rec.device is not None and span_rec.device.padded_s == 0.25
    assert loss.values == {"loss": 2.5} and loss.counts == {"num_tokens": 64}
    with pytest.raises(ValueError, match="not a telemetry event"):
        tracer.event("loss_train")


def test_server_records_name_the_client_they_are_about() -> None:
    got = []
    tracer = Tracer(None, "main_server", sink=got.append)
    with tracer.span("server_compute", round=0, step=0, client=1):
        pass
    assert got[0].source == "main_server" and got[0].client == 1


def test_collected_trace_reads_back_typed_and_as_dicts(tmp_path: Path) -> None:
    collector = TelemetryCollector(tmp_path)
    tracer = Tracer(None, "fed_server", sink=collector.emit_local)
    with tracer.span("aggregation", round=0) as span:
        span.extra = {"clients": [0, 1], "weights": [1.0, 2.0]}
    tracer.event("round_done", round=0, num_clients=2)
    collector.close()
    typed = read_telemetry(tmp_path)
    assert [(r.name, r.seq) for r in typed] == [("aggregation", 1), ("round_done", 2)]
    dicts = read_records(tmp_path)
    assert dicts[1]["extra"] == {"num_clients": 2} and dicts[1]["source"] == "fed_server"
    assert dicts[0]["extra"]["weights"] == [1.0, 2.0]


def _legacy(**changes) -> dict:
    """A line as the Tracer wrote it before records named their source and schema."""
    return {
        "kind": "event",
        "role": "client",
        "client": 0,
        "round": 2,
        "step": -1,
        "name": "val_loss",
        "t0": 5.0,
        "t1": 5.0,
        "bytes": 0,
        "extra": {"loss": 1.25},
        **changes,
    }


def test_legacy_lines_and_a_torn_last_line(tmp_path: Path) -> None:
    lines = [json.dumps(_legacy()), '{"kind": "sp']
    (tmp_path / "client_0.jsonl").write_text("\n".join(lines))
    (rec,) = read_telemetry(tmp_path)
    assert rec.source == "client_0" and rec.event is EventKind.VAL_LOSS
    assert rec.values == {"loss": 1.25} and rec.number("loss") == 1.25
    (doc,) = read_records(tmp_path)
    assert doc["source"] == "client_0" and doc["extra"] == {"loss": 1.25}


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"name": "no_such_event"}, "'no_such_event' is not a telemetry event"),
        ({"kind": "span", "name": "upload"}, "'upload' is not a telemetry phase"),
        ({"schema": 99}, "schema 99 is newer"),
        ({"role": "gateway"}, "'gateway' is not one of"),
    ],
)
def test_a_record_outside_the_schema_is_refused_naming_file_and_line(
    tmp_path: Path, changes: dict, why: str
) -> None:
    lines = [json.dumps(_legacy()), json.dumps(_legacy(t0=6.0, t1=6.0, **changes))]
    (tmp_path / "client_0.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="client_0.jsonl:2: unreadable telemetry record") as err:
        read_telemetry(tmp_path)
    assert why in str(err.value)
    assert str(tmp_path / "client_0.jsonl") in str(err.value)


def test_typed_views_of_a_record() -> None:
    span = from_dict({**_legacy(), "kind": "span", "name": "wait_reply", "extra": {"n": 3}})
    assert span.phase is Phase.WAIT_REPLY and span.event is None and span.is_span
    assert span.number("n") == 3.0 and span.has_number("n") and not span.has_number("x")
    assert math.isnan(span.number("x")) and span.number("x", 0.0) == 0.0
    event = from_dict(_legacy())
    assert event.event is EventKind.VAL_LOSS and event.phase is None and event.is_event
    assert [p.value for p in Phase] == list(PHASES)
    assert [e.value for e in EventKind] == list(EVENTS)
