"""TelemetryRecord <-> fedsllm.proto.TelemetryRecord, in the style of fedsllm/wire/.

The only place telemetry meets protobuf; the enums map by position to the
name tuples of fedsllm.telemetry.records (value = index + 1, 0 = unspecified).
"""

from __future__ import annotations

from fedsllm.errors import WireError
from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.telemetry.records import (
    EVENTS,
    PHASES,
    ROLES,
    SCHEMA_VERSION,
    DeviceStep,
    TelemetryRecord,
)

_PHASE_VALUE = {name: i + 1 for i, name in enumerate(PHASES)}
_EVENT_VALUE = {name: i + 1 for i, name in enumerate(EVENTS)}
_ROLE_VALUE = {name: i + 1 for i, name in enumerate(ROLES)}


def record_to_proto(record: TelemetryRecord) -> pb.TelemetryRecord:
    msg = pb.TelemetryRecord(
        schema=record.schema,
        role=_ROLE_VALUE[record.role],
        source_client=record.source_client,
        seq=record.seq,
        client=record.client,
        round=record.round,
        step=record.step,
        t0_s=record.t0,
        t1_s=record.t1,
        bytes=record.bytes,
    )
    if record.kind == "span":
        msg.kind = pb.RECORD_KIND_SPAN
        msg.phase = _PHASE_VALUE[record.name]
    else:
        msg.kind = pb.RECORD_KIND_EVENT
        msg.event = _EVENT_VALUE[record.name]
    msg.values.update(record.values)
    msg.counts.update(record.counts)
    msg.labels.update(record.labels)
    for key, values in record.series.items():
        msg.series[key].values.extend(values)
    if record.device is not None:
        d = record.device
        msg.device.CopyFrom(
            pb.DeviceStep(
                label=d.label,
                flops=d.flops,
                target_s=d.target_s,
                compute_s=d.compute_s,
                padded_s=d.padded_s,
                overrun_s=d.overrun_s,
                done=d.done,
            )
        )
    return msg


def record_from_proto(msg: pb.TelemetryRecord) -> TelemetryRecord:
    """The record `msg` holds; WireError naming the field when it is not one this
    schema knows (newer schema, unknown enum value, missing name)."""
    if msg.schema < 1 or msg.schema > SCHEMA_VERSION:
        raise WireError(
            "record.schema", f"{msg.schema} is not a schema this reader knows (1..{SCHEMA_VERSION})"
        )
    if not 1 <= msg.role <= len(ROLES):
        raise WireError("record.role", f"{msg.role} is not a known telemetry role")
    if msg.kind == pb.RECORD_KIND_SPAN:
        kind, names, value, field = "span", PHASES, msg.phase, "record.phase"
    elif msg.kind == pb.RECORD_KIND_EVENT:
        kind, names, value, field = "event", EVENTS, msg.event, "record.event"
    else:
        raise WireError("record.kind", f"{msg.kind} is neither SPAN nor EVENT")
    if not 1 <= value <= len(names):
        raise WireError(field, f"{value} is not a known {kind} name")
    device = None
    if msg.HasField("device"):
        d = msg.device
        device = DeviceStep(
            label=d.label,
            flops=d.flops,
            target_s=d.target_s,
            compute_s=d.compute_s,
            padded_s=d.padded_s,
            overrun_s=d.overrun_s,
            done=d.done,
        )
    return TelemetryRecord(
        kind=kind,
        name=names[value - 1],
        role=ROLES[msg.role - 1],
        source_client=msg.source_client,
        seq=msg.seq,
        client=msg.client,
        round=msg.round,
        step=msg.step,
        t0=msg.t0_s,
        t1=msg.t1_s,
        bytes=msg.bytes,
        values=dict(msg.values),
        counts=dict(msg.counts),
        labels=dict(msg.labels),
        series={k: tuple(v.values) for k, v in msg.series.items()},
        device=device,
        schema=msg.schema,
    )


def role_to_proto(role: str) -> int:
    return _ROLE_VALUE[role]


def role_from_proto(value: int) -> str:
    """The role name of a TelemetryRole value; WireError when it is not one."""
    if not 1 <= value <= len(ROLES):
        raise WireError("role", f"{value} is not a known telemetry role")
    return ROLES[value - 1]
