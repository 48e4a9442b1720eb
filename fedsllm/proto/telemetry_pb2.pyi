from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TelemetrySchema(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TELEMETRY_SCHEMA_UNSPECIFIED: _ClassVar[TelemetrySchema]
    TELEMETRY_SCHEMA_V1: _ClassVar[TelemetrySchema]

class TelemetryRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TELEMETRY_ROLE_UNSPECIFIED: _ClassVar[TelemetryRole]
    TELEMETRY_ROLE_CLIENT: _ClassVar[TelemetryRole]
    TELEMETRY_ROLE_MAIN_SERVER: _ClassVar[TelemetryRole]
    TELEMETRY_ROLE_FED_SERVER: _ClassVar[TelemetryRole]
    TELEMETRY_ROLE_CONTROLLER: _ClassVar[TelemetryRole]
    TELEMETRY_ROLE_LAUNCHER: _ClassVar[TelemetryRole]

class RecordKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_KIND_UNSPECIFIED: _ClassVar[RecordKind]
    RECORD_KIND_SPAN: _ClassVar[RecordKind]
    RECORD_KIND_EVENT: _ClassVar[RecordKind]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_CLIENT_FORWARD: _ClassVar[Phase]
    PHASE_UPLINK: _ClassVar[Phase]
    PHASE_SERVER_COMPUTE: _ClassVar[Phase]
    PHASE_DOWNLINK: _ClassVar[Phase]
    PHASE_CLIENT_BACKWARD: _ClassVar[Phase]
    PHASE_ADAPTER_UPLOAD: _ClassVar[Phase]
    PHASE_AGGREGATION: _ClassVar[Phase]
    PHASE_WAIT_GLOBAL: _ClassVar[Phase]
    PHASE_GLOBAL_DOWNLOAD: _ClassVar[Phase]
    PHASE_WAIT_REPLY: _ClassVar[Phase]
    PHASE_EVAL: _ClassVar[Phase]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_TRAIN_LOSS: _ClassVar[EventKind]
    EVENT_KIND_VAL_LOSS: _ClassVar[EventKind]
    EVENT_KIND_ROUND_DONE: _ClassVar[EventKind]
    EVENT_KIND_PLAN: _ClassVar[EventKind]
    EVENT_KIND_ALLOCATION: _ClassVar[EventKind]
    EVENT_KIND_ALLOCATION_ERROR: _ClassVar[EventKind]
    EVENT_KIND_RATES_APPLIED: _ClassVar[EventKind]
    EVENT_KIND_STRAGGLER: _ClassVar[EventKind]
    EVENT_KIND_CLOCK_OFFSET: _ClassVar[EventKind]
    EVENT_KIND_DEVICE_SUMMARY: _ClassVar[EventKind]
    EVENT_KIND_LINK_STATS: _ClassVar[EventKind]
    EVENT_KIND_RECONNECT: _ClassVar[EventKind]
    EVENT_KIND_PUSH_ACCEPTED: _ClassVar[EventKind]
TELEMETRY_SCHEMA_UNSPECIFIED: TelemetrySchema
TELEMETRY_SCHEMA_V1: TelemetrySchema
TELEMETRY_ROLE_UNSPECIFIED: TelemetryRole
TELEMETRY_ROLE_CLIENT: TelemetryRole
TELEMETRY_ROLE_MAIN_SERVER: TelemetryRole
TELEMETRY_ROLE_FED_SERVER: TelemetryRole
TELEMETRY_ROLE_CONTROLLER: TelemetryRole
TELEMETRY_ROLE_LAUNCHER: TelemetryRole
RECORD_KIND_UNSPECIFIED: RecordKind
RECORD_KIND_SPAN: RecordKind
RECORD_KIND_EVENT: RecordKind
PHASE_UNSPECIFIED: Phase
PHASE_CLIENT_FORWARD: Phase
PHASE_UPLINK: Phase
PHASE_SERVER_COMPUTE: Phase
PHASE_DOWNLINK: Phase
PHASE_CLIENT_BACKWARD: Phase
PHASE_ADAPTER_UPLOAD: Phase
PHASE_AGGREGATION: Phase
PHASE_WAIT_GLOBAL: Phase
PHASE_GLOBAL_DOWNLOAD: Phase
PHASE_WAIT_REPLY: Phase
PHASE_EVAL: Phase
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_TRAIN_LOSS: EventKind
EVENT_KIND_VAL_LOSS: EventKind
EVENT_KIND_ROUND_DONE: EventKind
EVENT_KIND_PLAN: EventKind
EVENT_KIND_ALLOCATION: EventKind
EVENT_KIND_ALLOCATION_ERROR: EventKind
EVENT_KIND_RATES_APPLIED: EventKind
EVENT_KIND_STRAGGLER: EventKind
EVENT_KIND_CLOCK_OFFSET: EventKind
EVENT_KIND_DEVICE_SUMMARY: EventKind
EVENT_KIND_LINK_STATS: EventKind
EVENT_KIND_RECONNECT: EventKind
EVENT_KIND_PUSH_ACCEPTED: EventKind

class DeviceStep(_message.Message):
    __slots__ = ("label", "flops", "target_s", "compute_s", "padded_s", "overrun_s", "done")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    PADDED_S_FIELD_NUMBER: _ClassVar[int]
    OVERRUN_S_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    label: str
    flops: float
    target_s: float
    compute_s: float
    padded_s: float
    overrun_s: float
    done: bool
    def __init__(self, label: _Optional[str] = ..., flops: _Optional[float] = ..., target_s: _Optional[float] = ..., compute_s: _Optional[float] = ..., padded_s: _Optional[float] = ..., overrun_s: _Optional[float] = ..., done: _Optional[bool] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class TelemetryRecord(_message.Message):
    __slots__ = ("schema", "role", "source_client", "seq", "kind", "phase", "event", "client", "round", "step", "t0_s", "t1_s", "bytes", "values", "counts", "labels", "series", "device")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SeriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Series
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Series, _Mapping]] = ...) -> None: ...
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CLIENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    T0_S_FIELD_NUMBER: _ClassVar[int]
    T1_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    schema: TelemetrySchema
    role: TelemetryRole
    source_client: int
    seq: int
    kind: RecordKind
    phase: Phase
    event: EventKind
    client: int
    round: int
    step: int
    t0_s: float
    t1_s: float
    bytes: int
    values: _containers.ScalarMap[str, float]
    counts: _containers.ScalarMap[str, int]
    labels: _containers.ScalarMap[str, str]
    series: _containers.MessageMap[str, Series]
    device: DeviceStep
    def __init__(self, schema: _Optional[_Union[TelemetrySchema, str]] = ..., role: _Optional[_Union[TelemetryRole, str]] = ..., source_client: _Optional[int] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[RecordKind, str]] = ..., phase: _Optional[_Union[Phase, str]] = ..., event: _Optional[_Union[EventKind, str]] = ..., client: _Optional[int] = ..., round: _Optional[int] = ..., step: _Optional[int] = ..., t0_s: _Optional[float] = ..., t1_s: _Optional[float] = ..., bytes: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ..., counts: _Optional[_Mapping[str, int]] = ..., labels: _Optional[_Mapping[str, str]] = ..., series: _Optional[_Mapping[str, Series]] = ..., device: _Optional[_Union[DeviceStep, _Mapping]] = ...) -> None: ...

class PushTelemetryRequest(_message.Message):
    __slots__ = ("role", "source_client", "records", "final")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CLIENT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    role: TelemetryRole
    source_client: int
    records: _containers.RepeatedCompositeFieldContainer[TelemetryRecord]
    final: bool
    def __init__(self, role: _Optional[_Union[TelemetryRole, str]] = ..., source_client: _Optional[int] = ..., records: _Optional[_Iterable[_Union[TelemetryRecord, _Mapping]]] = ..., final: _Optional[bool] = ...) -> None: ...

class PushTelemetryResponse(_message.Message):
    __slots__ = ("acked_seq",)
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    def __init__(self, acked_seq: _Optional[int] = ...) -> None: ...

class SubscribeTelemetryRequest(_message.Message):
    __slots__ = ("from_index",)
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    from_index: int
    def __init__(self, from_index: _Optional[int] = ...) -> None: ...

class SubscribeTelemetryResponse(_message.Message):
    __slots__ = ("index", "record", "collector_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    record: TelemetryRecord
    collector_id: str
    def __init__(self, index: _Optional[int] = ..., record: _Optional[_Union[TelemetryRecord, _Mapping]] = ..., collector_id: _Optional[str] = ...) -> None: ...
