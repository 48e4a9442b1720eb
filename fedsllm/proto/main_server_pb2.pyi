from fedsllm.proto import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StepMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_MODE_UNSPECIFIED: _ClassVar[StepMode]
    STEP_MODE_TRAIN: _ClassVar[StepMode]
    STEP_MODE_EVAL: _ClassVar[StepMode]
STEP_MODE_UNSPECIFIED: StepMode
STEP_MODE_TRAIN: StepMode
STEP_MODE_EVAL: StepMode

class TrainHello(_message.Message):
    __slots__ = ("client_id", "scenario_hash", "wire_dtype", "wire_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_HASH_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    WIRE_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    scenario_hash: str
    wire_dtype: str
    wire_version: int
    def __init__(self, client_id: _Optional[int] = ..., scenario_hash: _Optional[str] = ..., wire_dtype: _Optional[str] = ..., wire_version: _Optional[int] = ...) -> None: ...

class StepHeader(_message.Message):
    __slots__ = ("round", "step", "mode", "downlink_bps", "tensor_names", "sent_unix_s", "initial_adapter")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BPS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_NAMES_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    INITIAL_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    round: int
    step: int
    mode: StepMode
    downlink_bps: float
    tensor_names: _containers.RepeatedScalarFieldContainer[str]
    sent_unix_s: float
    initial_adapter: bool
    def __init__(self, round: _Optional[int] = ..., step: _Optional[int] = ..., mode: _Optional[_Union[StepMode, str]] = ..., downlink_bps: _Optional[float] = ..., tensor_names: _Optional[_Iterable[str]] = ..., sent_unix_s: _Optional[float] = ..., initial_adapter: _Optional[bool] = ...) -> None: ...

class StepEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepPart(_message.Message):
    __slots__ = ("header", "chunks", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: StepHeader
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    end: bool
    def __init__(self, header: _Optional[_Union[StepHeader, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ..., end: _Optional[bool] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("hello", "header", "chunk", "end", "part")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    hello: TrainHello
    header: StepHeader
    chunk: _tensor_pb2.TensorChunk
    end: StepEnd
    part: StepPart
    def __init__(self, hello: _Optional[_Union[TrainHello, _Mapping]] = ..., header: _Optional[_Union[StepHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., end: _Optional[_Union[StepEnd, _Mapping]] = ..., part: _Optional[_Union[StepPart, _Mapping]] = ...) -> None: ...

class TrainWelcome(_message.Message):
    __slots__ = ("client_id", "scenario_hash", "max_tensor_bytes", "wire_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_HASH_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIRE_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    scenario_hash: str
    max_tensor_bytes: int
    wire_version: int
    def __init__(self, client_id: _Optional[int] = ..., scenario_hash: _Optional[str] = ..., max_tensor_bytes: _Optional[int] = ..., wire_version: _Optional[int] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("round", "step", "loss", "num_tokens", "server_compute_s", "server_forward_s", "server_backward_s", "server_update_s", "server_queue_s", "server_receive_s", "tensor_names")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SERVER_COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_BACKWARD_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_UPDATE_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_RECEIVE_S_FIELD_NUMBER: _ClassVar[int]
    TENSOR_NAMES_FIELD_NUMBER: _ClassVar[int]
    round: int
    step: int
    loss: float
    num_tokens: int
    server_compute_s: float
    server_forward_s: float
    server_backward_s: float
    server_update_s: float
    server_queue_s: float
    server_receive_s: float
    tensor_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., step: _Optional[int] = ..., loss: _Optional[float] = ..., num_tokens: _Optional[int] = ..., server_compute_s: _Optional[float] = ..., server_forward_s: _Optional[float] = ..., server_backward_s: _Optional[float] = ..., server_update_s: _Optional[float] = ..., server_queue_s: _Optional[float] = ..., server_receive_s: _Optional[float] = ..., tensor_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplyPart(_message.Message):
    __slots__ = ("result", "chunks")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    result: StepResult
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, result: _Optional[_Union[StepResult, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("welcome", "result", "chunk", "part")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    welcome: TrainWelcome
    result: StepResult
    chunk: _tensor_pb2.TensorChunk
    part: ReplyPart
    def __init__(self, welcome: _Optional[_Union[TrainWelcome, _Mapping]] = ..., result: _Optional[_Union[StepResult, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., part: _Optional[_Union[ReplyPart, _Mapping]] = ...) -> None: ...

class GetServerAdapterRequest(_message.Message):
    __slots__ = ("requester",)
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    requester: int
    def __init__(self, requester: _Optional[int] = ...) -> None: ...
