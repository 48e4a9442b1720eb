from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("client_id", "num_samples", "flops", "tx_power_dbm", "distance_m", "gain_db")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    TX_POWER_DBM_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    num_samples: int
    flops: float
    tx_power_dbm: float
    distance_m: float
    gain_db: float
    def __init__(self, client_id: _Optional[int] = ..., num_samples: _Optional[int] = ..., flops: _Optional[float] = ..., tx_power_dbm: _Optional[float] = ..., distance_m: _Optional[float] = ..., gain_db: _Optional[float] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("num_registered", "num_expected")
    NUM_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    NUM_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    num_registered: int
    num_expected: int
    def __init__(self, num_registered: _Optional[int] = ..., num_expected: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    def __init__(self, client_id: _Optional[int] = ...) -> None: ...

class AllocationUpdate(_message.Message):
    __slots__ = ("version", "round", "client_id", "policy", "bandwidth_hz", "share", "uplink_bps", "downlink_bps", "num_local_steps", "eta", "predicted_round_s", "predicted_total_s", "issued_unix_s", "num_rounds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_HZ_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    UPLINK_BPS_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BPS_FIELD_NUMBER: _ClassVar[int]
    NUM_LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_ROUND_S_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    round: int
    client_id: int
    policy: str
    bandwidth_hz: float
    share: float
    uplink_bps: float
    downlink_bps: float
    num_local_steps: int
    eta: float
    predicted_round_s: float
    predicted_total_s: float
    issued_unix_s: float
    num_rounds: int
    def __init__(self, version: _Optional[int] = ..., round: _Optional[int] = ..., client_id: _Optional[int] = ..., policy: _Optional[str] = ..., bandwidth_hz: _Optional[float] = ..., share: _Optional[float] = ..., uplink_bps: _Optional[float] = ..., downlink_bps: _Optional[float] = ..., num_local_steps: _Optional[int] = ..., eta: _Optional[float] = ..., predicted_round_s: _Optional[float] = ..., predicted_total_s: _Optional[float] = ..., issued_unix_s: _Optional[float] = ..., num_rounds: _Optional[int] = ...) -> None: ...

class ReportChannelRequest(_message.Message):
    __slots__ = ("client_id", "gain_db", "distance_m")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    gain_db: float
    distance_m: float
    def __init__(self, client_id: _Optional[int] = ..., gain_db: _Optional[float] = ..., distance_m: _Optional[float] = ...) -> None: ...

class ReportChannelResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...
