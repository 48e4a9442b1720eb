"""Typed telemetry records: names from the closed sets, attributes sorted by type,
and lossless round trips through the proto and the JSON form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedsllm.device import StepRecord
from fedsllm.errors import WireError
from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.telemetry.codec import record_from_proto, record_to_proto
from fedsllm.telemetry.records import (
    EVENTS,
    PHASES,
    SCHEMA_VERSION,
    TelemetryRecord,
    from_dict,
    make_record,
)


def _record(kind: str, name: str, extra: dict, role: str = "client", source_client: int = 2):
    return make_record(
        kind,
        name,
        role,
        source_client=source_client,
        client=2,
        round=3,
        step=7,
        t0=1.7e9 + 0.125,
        t1=1.7e9 + 0.5,
        bytes=4096,
        extra=extra,
    ).numbered(42)


CASES = [
    (
        "span",
        "client_forward",
        {"device": StepRecord("client_forward", 1e9, 0.01, 0.02, 0.0, 0.01, True)},
    ),
    ("span", "wait_reply", {"server_compute_s": 0.25, "downlink_bps": 0}),
    ("span", "aggregation", {"clients": [0, 1, 2], "weights": [32.0, 32.0, 16.0]}),
    ("event", "train_loss", {"loss": 3.5, "num_tokens": 128}),
    ("event", "plan", {"policy": "optimal", "eta": 0.5, "num_rounds": 4, "num_local_steps": 3}),
    ("event", "device_summary", {"num_steps": 9, "overrun_by_label": {"fwd": 0.5, "bwd": 0.25}}),
    ("event", "allocation", {"share": np.float64(0.25), "version": np.int64(3), "ok": True}),
    ("event", "val_loss", {"loss": math.inf}),
]


@pytest.mark.parametrize(("kind", "name", "extra"), CASES, ids=[c[1] for c in CASES])
def test_proto_round_trip(kind: str, name: str, extra: dict) -> None:
    rec = _record(kind, name, extra)
    wire = record_to_proto(rec).SerializeToString()
    back = record_from_proto(pb.TelemetryRecord.FromString(wire))
    assert back == rec
    assert back.source == "client_2" and back.seq == 42 and back.schema == SCHEMA_VERSION


@pytest.mark.parametrize(("kind", "name", "extra"), CASES, ids=[c[1] for c in CASES])
def test_json_round_trip(kind: str, name: str, extra: dict) -> None:
    rec = _record(kind, name, extra, role="main_server", source_client=-1)
    line = json.dumps(rec.to_dict())
    assert from_dict(json.loads(line)) == rec


def test_attributes_are_typed_and_dict_form_nests_groups() -> None:
    rec = _record(
        "event",
        "device_summary",
        {"num_steps": 9, "compute_s": 1.5, "mode": "train", "overrun_by_label": {"fwd": 0.5}},
    )
    assert rec.counts == {"num_steps": 9}
    assert rec.values == {"compute_s": 1.5, "overrun_by_label.fwd": 0.5}
    assert rec.labels == {"mode": "train"}
    assert rec.extra() == {
        "num_steps": 9,
        "compute_s": 1.5,
        "mode": "train",
        "overrun_by_label": {"fwd": 0.5},
    }
    span = _record("span", "client_backward", {"device": StepRecord("bwd", 2.0, 1.0)})
    assert span.to_dict()["extra"]["device"]["target_s"] == 1.0
    assert span.to_dict()["source"] == "client_2"


def test_unknown_names_are_refused_at_emit() -> None:
    with pytest.raises(ValueError, match="not a telemetry phase"):
        _record("span", "train_loss", {})
    with pytest.raises(ValueError, match="not a telemetry event"):
        _record("event", "client_forward", {})
    with pytest.raises(ValueError, match="kind"):
        _record("metric", "loss", {})


def test_enums_match_the_name_tuples() -> None:
    phases = [n for n in list(pb.Phase.keys()) if n != "PHASE_UNSPECIFIED"]
    events = [n for n in list(pb.EventKind.keys()) if n != "EVENT_KIND_UNSPECIFIED"]
    assert phases == [f"PHASE_{p.upper()}" for p in PHASES]
    assert events == [f"EVENT_KIND_{e.upper()}" for e in EVENTS]
    assert [pb.Phase.Value(f"PHASE_{p.upper()}") for p in PHASES] == list(range(1, len(PHASES) + 1))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m, "schema", SCHEMA_VERSION + 1), "record.schema"),
        (lambda m: setattr(m, "phase", 99), "record.phase"),
        (lambda m: setattr(m, "kind", 0), "record.kind"),
        (lambda m: setattr(m, "role", 0), "record.role"),
    ],
)
def test_bad_proto_is_refused_naming_the_field(mutate, field: str) -> None:
    msg = record_to_proto(_record("span", "uplink", {}))
    mutate(msg)
    with pytest.raises(WireError, match=field):
        record_from_proto(msg)


def test_newer_json_schema_is_refused() -> None:
    doc = _record("event", "round_done", {"num_clients": 2}).to_dict()
    doc["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        from_dict(doc)
    assert isinstance(from_dict({**doc, "schema": SCHEMA_VERSION}), TelemetryRecord)
