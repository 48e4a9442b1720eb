"""The typed telemetry record: one schema for every span and event of a run.

`TelemetryRecord` is what every role emits (through fedsllm.trace.Tracer),
what travels to the collector (fedsllm.telemetry.codec turns it into
proto/fedsllm/proto/telemetry.proto's message) and what every reader gets.
Span and event names are closed sets (the `Phase` and `EventKind` enums, and
their names PHASES, EVENTS), mirrored by the proto's Phase and EventKind enums:
a new name is added in both places, and a name outside them is refused when it
is emitted or read, not discovered by a reader. Readers (the summary, the
report, the experiments, the progress display) match `rec.phase` /
`rec.event` against the enums, never the name string.

Attributes are typed by value: floats in `values`, integers and flags in
`counts`, text in `labels`, number lists in `series`; a nested dict `a` becomes
keys "a.b"; the emulated compute step of a span is a `DeviceStep`.
`number(key)` reads a numeric attribute whichever of values/counts holds it.
`to_dict` gives the JSON form the run directory keeps (trace/<source>.jsonl),
which fedsllm.trace.read_telemetry reads back through `from_dict`: the legacy
keys (kind, role, client, round, step, name, t0, t1, bytes, extra) plus
schema, source and seq.

No I/O, no protobuf, no grpc here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
"""Version of the record schema; bump it (and TelemetrySchema in the proto) on
an incompatible change. Readers refuse records of a newer version."""

PHASES: tuple[str, ...] = (
    "client_forward",
    "uplink",
    "server_compute",
    "downlink",
    "client_backward",
    "adapter_upload",
    "aggregation",
    "wait_global",
    "global_download",
    "wait_reply",
    "eval",
)
"""Span names, in the order of the proto's Phase enum (value = index + 1)."""

EVENTS: tuple[str, ...] = (
    "train_loss",
    "val_loss",
    "round_done",
    "plan",
    "allocation",
    "allocation_error",
    "rates_applied",
    "straggler",
    "clock_offset",
    "device_summary",
    "link_stats",
    "reconnect",
    "push_accepted",
)
"""Event names, in the order of the proto's EventKind enum (value = index + 1)."""


class Phase(enum.StrEnum):
    """A span's phase (the proto's Phase enum; a member equals its name in PHASES)."""

    CLIENT_FORWARD = "client_forward"
    UPLINK = "uplink"
    SERVER_COMPUTE = "server_compute"
    DOWNLINK = "downlink"
    CLIENT_BACKWARD = "client_backward"
    ADAPTER_UPLOAD = "adapter_upload"
    AGGREGATION = "aggregation"
    WAIT_GLOBAL = "wait_global"
    GLOBAL_DOWNLOAD = "global_download"
    WAIT_REPLY = "wait_reply"
    EVAL = "eval"


class EventKind(enum.StrEnum):
    """An event's kind (the proto's EventKind enum; a member equals its name in EVENTS)."""

    TRAIN_LOSS = "train_loss"
    VAL_LOSS = "val_loss"
    ROUND_DONE = "round_done"
    PLAN = "plan"
    ALLOCATION = "allocation"
    ALLOCATION_ERROR = "allocation_error"
    RATES_APPLIED = "rates_applied"
    STRAGGLER = "straggler"
    CLOCK_OFFSET = "clock_offset"
    DEVICE_SUMMARY = "device_summary"
    LINK_STATS = "link_stats"
    RECONNECT = "reconnect"
    PUSH_ACCEPTED = "push_accepted"


_PHASE_OF: dict[str, Phase] = {p.value: p for p in Phase}
_EVENT_OF: dict[str, EventKind] = {e.value: e for e in EventKind}

ROLES: tuple[str, ...] = ("client", "main_server", "fed_server", "controller", "launcher")
"""Emitting roles, in the order of the proto's TelemetryRole enum (value = index + 1)."""

_PHASE_SET = frozenset(PHASES)
_EVENT_SET = frozenset(EVENTS)
_ROLE_SET = frozenset(ROLES)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStep:
    """One emulated compute step (fedsllm.device.StepRecord), emulated seconds."""

    label: str
    flops: float
    target_s: float
    compute_s: float = math.nan
    padded_s: float = 0.0
    overrun_s: float = 0.0
    done: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryRecord:
    """One span or event. `seq` is 0 until the source's sink numbers it."""

    kind: str
    """"span" or "event"."""
    name: str
    """A phase (PHASES) for a span, an event name (EVENTS) for an event."""
    role: str
    """Emitting role (ROLES)."""
    source_client: int = -1
    """Emitting client's id; -1 for the other roles."""
    seq: int = 0
    """Per source: 1, 2, 3, ... with no gap (0 = not numbered yet)."""
    client: int = -1
    """Client the record is about; -1 when none."""
    round: int = -1
    step: int = -1
    t0: float = 0.0
    """Start, unix seconds on the fed server's clock."""
    t1: float = 0.0
    """End, unix seconds on the fed server's clock (== t0 for an event)."""
    bytes: int = 0
    values: Mapping[str, float] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    series: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    device: DeviceStep | None = None
    schema: int = SCHEMA_VERSION

    @property
    def phase(self) -> Phase | None:
        """The span's phase; None for an event."""
        return _PHASE_OF[self.name] if self.kind == "span" else None

    @property
    def event(self) -> EventKind | None:
        """The event's kind; None for a span."""
        return _EVENT_OF[self.name] if self.kind == "event" else None

    @property
    def is_span(self) -> bool:
        return self.kind == "span"

    @property
    def is_event(self) -> bool:
        return self.kind == "event"

    def number(self, key: str, default: float = math.nan) -> float:
        """A numeric attribute as a float, whether it was recorded as a float
        (`values`) or an integer or flag (`counts`); `default` when absent."""
        if key in self.values:
            return float(self.values[key])
        if key in self.counts:
            return float(self.counts[key])
        return default

    def has_number(self, key: str) -> bool:
        return key in self.values or key in self.counts

    @property
    def source(self) -> str:
        """Name of the emitting process, and of its file in the run's trace/:
        "client_<k>" for a client, else the role."""
        return source_name(self.role, self.source_client)

    def numbered(self, seq: int) -> TelemetryRecord:
        return dataclasses.replace(self, seq=seq)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the run directory keeps and the readers read."""
        return {
            "schema": self.schema,
            "source": self.source,
            "seq": self.seq,
            "kind": self.kind,
            "role": self.role,
            "client": self.client,
            "round": self.round,
            "step": self.step,
            "name": self.name,
            "t0": self.t0,
            "t1": self.t1,
            "bytes": self.bytes,
            "extra": self.extra(),
        }

    def extra(self) -> dict[str, Any]:
        """The attributes as one dict, groups ("a.b" keys) nested again."""
        out: dict[str, Any] = {}
        for part in (self.values, self.counts, self.labels):
            for key, value in part.items():
                _put(out, key, value)
        for key, values in self.series.items():
            _put(out, key, list(values))
        if self.device is not None:
            out["device"] = dataclasses.asdict(self.device)
        return out


def source_name(role: str, client_id: int) -> str:
    return f"client_{client_id}" if role == "client" else role


def check_name(kind: str, name: str) -> None:
    """ValueError unless `name` is a known phase (span) or event name (event)."""
    if kind == "span":
        if name not in _PHASE_SET:
            raise ValueError(f"span name {name!r} is not a telemetry phase; known: {PHASES}")
    elif kind == "event":
        if name not in _EVENT_SET:
            raise ValueError(f"event name {name!r} is not a telemetry event; known: {EVENTS}")
    else:
        raise ValueError(f"record kind {kind!r} must be 'span' or 'event'")


def check_role(role: str) -> None:
    if role not in _ROLE_SET:
        raise ValueError(f"telemetry role {role!r} is not one of {ROLES}")


def make_record(
    kind: str,
    name: str,
    role: str,
    *,
    source_client: int,
    client: int,
    round: int,
    step: int,
    t0: float,
    t1: float,
    bytes: int,
    extra: Mapping[str, Any] | None,
) -> TelemetryRecord:
    """A record from the Tracer's arguments: the name is checked and `extra`'s
    values are sorted into the typed attribute maps."""
    check_name(kind, name)
    values: dict[str, float] = {}
    counts: dict[str, int] = {}
    labels: dict[str, str] = {}
    series: dict[str, tuple[float, ...]] = {}
    device: DeviceStep | None = None
    if extra:
        for key, value in extra.items():
            if key == "device" and value is not None:
                device = _device_step(value)
            else:
                _sort(key, value, values, counts, labels, series)
    return TelemetryRecord(
        kind=kind,
        name=name,
        role=role,
        source_client=source_client,
        client=client,
        round=round,
        step=step,
        t0=t0,
        t1=t1,
        bytes=int(bytes),
        values=values,
        counts=counts,
        labels=labels,
        series=series,
        device=device,
    )


def _sort(
    key: str,
    value: Any,
    values: dict[str, float],
    counts: dict[str, int],
    labels: dict[str, str],
    series: dict[str, tuple[float, ...]],
) -> None:
    cls = type(value)
    if cls is float:
        values[key] = value
    elif cls is int or cls is bool:
        counts[key] = int(value)
    elif cls is str:
        labels[key] = value
    elif value is None:
        return
    elif isinstance(value, bool | int):
        counts[key] = int(value)
    elif isinstance(value, float):
        values[key] = float(value)
    elif isinstance(value, str):
        labels[key] = value
    elif isinstance(value, Mapping):
        for sub, item in value.items():
            _sort(f"{key}.{sub}", item, values, counts, labels, series)
    elif isinstance(value, list | tuple):
        series[key] = tuple(float(v) for v in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _sort(key, dataclasses.asdict(value), values, counts, labels, series)
    else:
        import numpy

        if isinstance(value, numpy.integer | numpy.bool_):
            counts[key] = int(value)
        elif isinstance(value, numpy.floating):
            values[key] = float(value)
        else:
            labels[key] = str(value)


def _device_step(value: Any) -> DeviceStep:
    # Attribute reads, not dataclasses.asdict: this runs on the training thread
    # for every compute span, and asdict deep-copies.
    get = value.get if isinstance(value, Mapping) else lambda k, d: getattr(value, k, d)
    return DeviceStep(
        label=str(get("label", "")),
        flops=float(get("flops", 0.0)),
        target_s=float(get("target_s", 0.0)),
        compute_s=float(get("compute_s", math.nan)),
        padded_s=float(get("padded_s", 0.0)),
        overrun_s=float(get("overrun_s", 0.0)),
        done=bool(get("done", False)),
    )


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    head, dot, rest = key.partition(".")
    if not dot:
        out[key] = value
        return
    inner = out.setdefault(head, {})
    if isinstance(inner, dict):
        _put(inner, rest, value)
    else:  # a flat key and a group of the same name: keep both, the group flat
        out[key] = value


def from_dict(doc: Mapping[str, Any]) -> TelemetryRecord:
    """The record a `to_dict` line came from (the collector re-reads its files on
    restart). ValueError for a record of a newer schema, or of a role, phase or
    event name outside it."""
    schema = int(doc.get("schema", SCHEMA_VERSION))
    if schema > SCHEMA_VERSION:
        raise ValueError(f"telemetry schema {schema} is newer than this reader's {SCHEMA_VERSION}")
    extra = dict(doc.get("extra") or {})
    source = str(doc.get("source", ""))
    role = str(doc["role"])
    check_role(role)
    source_client = int(source.removeprefix("client_")) if source.startswith("client_") else -1
    record = make_record(
        str(doc["kind"]),
        str(doc["name"]),
        role,
        source_client=source_client,
        client=int(doc.get("client", -1)),
        round=int(doc.get("round", -1)),
        step=int(doc.get("step", -1)),
        t0=float(doc["t0"]),
        t1=float(doc["t1"]),
        bytes=int(doc.get("bytes", 0)),
        extra=extra,
    )
    return dataclasses.replace(record, seq=int(doc.get("seq", 0)), schema=schema)
