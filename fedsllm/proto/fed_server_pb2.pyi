from fedsllm.proto import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetScenarioRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetScenarioResponse(_message.Message):
    __slots__ = ("scenario_json", "scenario_hash", "base_hash", "base_bytes")
    SCENARIO_JSON_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_BYTES_FIELD_NUMBER: _ClassVar[int]
    scenario_json: str
    scenario_hash: str
    base_hash: str
    base_bytes: int
    def __init__(self, scenario_json: _Optional[str] = ..., scenario_hash: _Optional[str] = ..., base_hash: _Optional[str] = ..., base_bytes: _Optional[int] = ...) -> None: ...

class FetchBaseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchBaseHeader(_message.Message):
    __slots__ = ("base_hash", "total_bytes")
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    base_hash: str
    total_bytes: int
    def __init__(self, base_hash: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class FetchBaseResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FetchBaseHeader
    chunk: _tensor_pb2.AdapterChunk
    def __init__(self, header: _Optional[_Union[FetchBaseHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.AdapterChunk, _Mapping]] = ...) -> None: ...

class MainServerJoinRequest(_message.Message):
    __slots__ = ("scenario_hash", "base_hash")
    SCENARIO_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    scenario_hash: str
    base_hash: str
    def __init__(self, scenario_hash: _Optional[str] = ..., base_hash: _Optional[str] = ...) -> None: ...

class MainServerJoinResponse(_message.Message):
    __slots__ = ("num_rounds",)
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    num_rounds: int
    def __init__(self, num_rounds: _Optional[int] = ...) -> None: ...

class PushServerAdapterHeader(_message.Message):
    __slots__ = ("round", "final", "total_bytes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    round: int
    final: bool
    total_bytes: int
    def __init__(self, round: _Optional[int] = ..., final: _Optional[bool] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PushServerAdapterRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushServerAdapterHeader
    chunk: _tensor_pb2.AdapterChunk
    def __init__(self, header: _Optional[_Union[PushServerAdapterHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.AdapterChunk, _Mapping]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("client_id", "num_samples", "scenario_hash", "base_hash")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    num_samples: int
    scenario_hash: str
    base_hash: str
    def __init__(self, client_id: _Optional[int] = ..., num_samples: _Optional[int] = ..., scenario_hash: _Optional[str] = ..., base_hash: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("current_round", "num_rounds", "num_local_steps")
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    NUM_LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    current_round: int
    num_rounds: int
    num_local_steps: int
    def __init__(self, current_round: _Optional[int] = ..., num_rounds: _Optional[int] = ..., num_local_steps: _Optional[int] = ...) -> None: ...

class PushAdapterHeader(_message.Message):
    __slots__ = ("client_id", "round", "num_samples", "total_bytes", "attempt")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    num_samples: int
    total_bytes: int
    attempt: int
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., num_samples: _Optional[int] = ..., total_bytes: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class PushAdapterRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushAdapterHeader
    chunk: _tensor_pb2.AdapterChunk
    def __init__(self, header: _Optional[_Union[PushAdapterHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.AdapterChunk, _Mapping]] = ...) -> None: ...

class PushAdapterResponse(_message.Message):
    __slots__ = ("accepted", "round", "num_received", "replayed", "seq")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    round: int
    num_received: int
    replayed: bool
    seq: int
    def __init__(self, accepted: _Optional[bool] = ..., round: _Optional[int] = ..., num_received: _Optional[int] = ..., replayed: _Optional[bool] = ..., seq: _Optional[int] = ...) -> None: ...

class PullGlobalRequest(_message.Message):
    __slots__ = ("client_id", "round")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...

class PullGlobalHeader(_message.Message):
    __slots__ = ("round", "has_adapter", "total_bytes", "finished")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    HAS_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    round: int
    has_adapter: bool
    total_bytes: int
    finished: bool
    def __init__(self, round: _Optional[int] = ..., has_adapter: _Optional[bool] = ..., total_bytes: _Optional[int] = ..., finished: _Optional[bool] = ...) -> None: ...

class PullGlobalResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PullGlobalHeader
    chunk: _tensor_pb2.AdapterChunk
    def __init__(self, header: _Optional[_Union[PullGlobalHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.AdapterChunk, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("round", "num_rounds", "finished", "clients_joined", "server_unix_s")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_JOINED_FIELD_NUMBER: _ClassVar[int]
    SERVER_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    round: int
    num_rounds: int
    finished: bool
    clients_joined: _containers.RepeatedScalarFieldContainer[int]
    server_unix_s: float
    def __init__(self, round: _Optional[int] = ..., num_rounds: _Optional[int] = ..., finished: _Optional[bool] = ..., clients_joined: _Optional[_Iterable[int]] = ..., server_unix_s: _Optional[float] = ...) -> None: ...
