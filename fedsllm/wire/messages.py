"""Small typed records for every non-tensor message, and their proto pairs.

Each `x_to_proto` / `x_from_proto` pair converts one frozen dataclass to and
from its protobuf message, so role logic handles plain Python values and
protobuf stops at fedsllm/wire/. The `_from_proto` side validates what a
peer could get wrong (an unset enum, a negative or non-finite rate, an
unknown wire dtype) and raises WireError naming the field and the value;
what a value means for the run (a stale round, an unknown client) is the
roles' call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsllm.config import WIRE_DTYPES
from fedsllm.errors import WireError

if TYPE_CHECKING:
    from fedsllm.proto import controller_pb2, fed_server_pb2, main_server_pb2

STEP_MODES = ("train", "eval")
STEP_MODE_NUMBERS = {"train": 1, "eval": 2}
"""STEP_MODES' StepMode numbers (main_server.proto: STEP_MODE_TRAIN,
STEP_MODE_EVAL; a test holds them to the generated code), so that writing
and reading a header (fedsllm.wire.heads, step_header_from_proto)
imports no protobuf module."""
_MODE_NAMES = {number: name for name, number in STEP_MODE_NUMBERS.items()}
TRAIN_WIRE_VERSION = 2
"""Version of the Train stream's format (grammar and TensorChunk encoding,
proto/fedsllm/proto/main_server.proto and tensor.proto). 2: a step's header,
chunks and end folded into StepPart messages, a reply's result into the first
ReplyPart; 1: each its own message; a peer sending 0 predates versioning and
speaks version 1. Only this version is accepted."""

_record = dataclass(frozen=True, kw_only=True, slots=True)


def _finite(field: str, value: float, *, minimum: float | None = 0.0) -> float:
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" and >= {minimum:g}"
        raise WireError(field, f"={value!r}, must be finite{bound}")
    return value


# ---------------------------------------------------------------- main server


@_record
class TrainHelloInfo:
    client_id: int
    scenario_hash: str
    wire_dtype: str
    """float32, bfloat16 or float16: precision of activations and gradients."""
    wire_version: int = TRAIN_WIRE_VERSION
    """Version of the Train stream's format the sender speaks."""


def _wire_version(field: str, version: int) -> int:
    version = version or 1  # unset: a peer from before versioning, which spoke 1
    if version != TRAIN_WIRE_VERSION:
        raise WireError(
            field,
            f"={version}, this side speaks {TRAIN_WIRE_VERSION} only "
            "(both ends of a Train stream must run the same wire version)",
        )
    return version


def hello_to_proto(info: TrainHelloInfo) -> main_server_pb2.TrainHello:
    from fedsllm.proto import main_server_pb2

    return main_server_pb2.TrainHello(
        client_id=info.client_id,
        scenario_hash=info.scenario_hash,
        wire_dtype=info.wire_dtype,
        wire_version=info.wire_version,
    )


def hello_from_proto(msg: main_server_pb2.TrainHello) -> TrainHelloInfo:
    version = _wire_version("TrainHello.wire_version", msg.wire_version)
    if msg.wire_dtype not in WIRE_DTYPES:
        raise WireError(
            "TrainHello.wire_dtype",
            f"={msg.wire_dtype!r}, expected one of {', '.join(WIRE_DTYPES)}",
        )
    if not msg.scenario_hash:
        raise WireError("TrainHello.scenario_hash", "is empty")
    return TrainHelloInfo(
        client_id=msg.client_id,
        scenario_hash=msg.scenario_hash,
        wire_dtype=msg.wire_dtype,
        wire_version=version,
    )


@_record
class TrainWelcomeInfo:
    client_id: int
    scenario_hash: str
    max_tensor_bytes: int
    """Largest tensor the server accepts, bytes."""
    wire_version: int = TRAIN_WIRE_VERSION
    """Version of the Train stream's format the server speaks."""


def welcome_to_proto(info: TrainWelcomeInfo) -> main_server_pb2.TrainWelcome:
    from fedsllm.proto import main_server_pb2

    return main_server_pb2.TrainWelcome(
        client_id=info.client_id,
        scenario_hash=info.scenario_hash,
        max_tensor_bytes=info.max_tensor_bytes,
        wire_version=info.wire_version,
    )


def welcome_from_proto(msg: main_server_pb2.TrainWelcome) -> TrainWelcomeInfo:
    return TrainWelcomeInfo(
        client_id=msg.client_id,
        scenario_hash=msg.scenario_hash,
        max_tensor_bytes=msg.max_tensor_bytes,
        wire_version=_wire_version("TrainWelcome.wire_version", msg.wire_version),
    )


@_record
class StepHeaderInfo:
    round: int
    step: int
    mode: str
    """train or eval."""
    downlink_bps: float
    """Rate the server paces its reply at, bit/s; 0 = unpaced."""
    tensor_names: tuple[str, ...]
    """Tensors that follow, in order."""
    sent_unix_s: float = 0.0
    """When the client began sending the step (Unix seconds, its clock); 0 = unset."""
    initial_adapter: bool = False
    """Eval only: use the server adapter as it was before training."""


def step_header_to_proto(info: StepHeaderInfo) -> main_server_pb2.StepHeader:
    from fedsllm.proto import main_server_pb2

    mode = STEP_MODE_NUMBERS.get(info.mode)
    if mode is None:
        raise WireError("StepHeader.mode", f"={info.mode!r}, expected one of {STEP_MODES}")
    return main_server_pb2.StepHeader(
        round=info.round,
        step=info.step,
        mode=mode,
        downlink_bps=info.downlink_bps,
        tensor_names=list(info.tensor_names),
        sent_unix_s=info.sent_unix_s,
        initial_adapter=info.initial_adapter,
    )


def step_header_from_proto(msg: main_server_pb2.StepHeader) -> StepHeaderInfo:
    mode = _MODE_NAMES.get(msg.mode)
    if mode is None:
        raise WireError(
            "StepHeader.mode", f"={msg.mode}, expected STEP_MODE_TRAIN or STEP_MODE_EVAL"
        )
    names = tuple(msg.tensor_names)
    if len(set(names)) != len(names) or not all(names):
        raise WireError("StepHeader.tensor_names", f"={list(names)} must be non-empty and unique")
    return StepHeaderInfo(
        round=msg.round,
        step=msg.step,
        mode=mode,
        downlink_bps=_finite("StepHeader.downlink_bps", msg.downlink_bps),
        tensor_names=names,
        sent_unix_s=_finite("StepHeader.sent_unix_s", msg.sent_unix_s),
        initial_adapter=msg.initial_adapter,
    )


@_record
class StepResultInfo:
    round: int
    step: int
    loss: float
    """Mean cross-entropy over the step's label tokens, nats."""
    num_tokens: int
    server_compute_s: float
    server_forward_s: float = 0.0
    server_backward_s: float = 0.0
    server_update_s: float = 0.0
    server_queue_s: float = 0.0
    server_receive_s: float = 0.0
    tensor_names: tuple[str, ...] = ()
    """Tensors whose chunks follow the result, in order."""


_RESULT_TIMES = (
    "server_compute_s",
    "server_forward_s",
    "server_backward_s",
    "server_update_s",
    "server_queue_s",
    "server_receive_s",
)


def step_result_to_proto(info: StepResultInfo) -> main_server_pb2.StepResult:
    from fedsllm.proto import main_server_pb2

    return main_server_pb2.StepResult(
        round=info.round,
        step=info.step,
        loss=info.loss,
        num_tokens=info.num_tokens,
        tensor_names=list(info.tensor_names),
        **{name: getattr(info, name) for name in _RESULT_TIMES},
    )


def step_result_from_proto(msg: main_server_pb2.StepResult) -> StepResultInfo:
    # A non-finite loss is a legitimate report (a diverged model), so only
    # the timings are range-checked. Every step's reply passes here: the
    # usual values are read and checked without a call each (issue 13).
    times = (
        msg.server_compute_s,
        msg.server_forward_s,
        msg.server_backward_s,
        msg.server_update_s,
        msg.server_queue_s,
        msg.server_receive_s,
    )
    for name, value in zip(_RESULT_TIMES, times, strict=True):
        if not 0.0 <= value < math.inf:  # also False for NaN
            _finite(f"StepResult.{name}", value)  # raises, naming the field
    compute, forward, backward, update, queue, receive = times
    return StepResultInfo(
        round=msg.round,
        step=msg.step,
        loss=msg.loss,
        num_tokens=msg.num_tokens,
        server_compute_s=compute,
        server_forward_s=forward,
        server_backward_s=backward,
        server_update_s=update,
        server_queue_s=queue,
        server_receive_s=receive,
        tensor_names=tuple(msg.tensor_names),
    )


@_record
class StepEndInfo:
    """Marks the end of a step's upload; carries nothing."""


# ---------------------------------------------------------------- fed server


@_record
class JoinInfo:
    client_id: int
    num_samples: int
    scenario_hash: str


def join_to_proto(info: JoinInfo) -> fed_server_pb2.JoinRequest:
    from fedsllm.proto import fed_server_pb2

    return fed_server_pb2.JoinRequest(
        client_id=info.client_id, num_samples=info.num_samples, scenario_hash=info.scenario_hash
    )


def join_from_proto(msg: fed_server_pb2.JoinRequest) -> JoinInfo:
    if msg.num_samples == 0:
        raise WireError("JoinRequest.num_samples", "=0, must be > 0")
    if not msg.scenario_hash:
        raise WireError("JoinRequest.scenario_hash", "is empty")
    return JoinInfo(
        client_id=msg.client_id, num_samples=msg.num_samples, scenario_hash=msg.scenario_hash
    )


@_record
class JoinReplyInfo:
    current_round: int
    num_rounds: int
    num_local_steps: int


def join_reply_to_proto(info: JoinReplyInfo) -> fed_server_pb2.JoinResponse:
    from fedsllm.proto import fed_server_pb2

    return fed_server_pb2.JoinResponse(
        current_round=info.current_round,
        num_rounds=info.num_rounds,
        num_local_steps=info.num_local_steps,
    )


def join_reply_from_proto(msg: fed_server_pb2.JoinResponse) -> JoinReplyInfo:
    return JoinReplyInfo(
        current_round=msg.current_round,
        num_rounds=msg.num_rounds,
        num_local_steps=msg.num_local_steps,
    )


@_record
class PushReplyInfo:
    accepted: bool
    """False when the round had already closed; the update was dropped."""
    round: int
    num_received: int


def push_reply_to_proto(info: PushReplyInfo) -> fed_server_pb2.PushAdapterResponse:
    from fedsllm.proto import fed_server_pb2

    return fed_server_pb2.PushAdapterResponse(
        accepted=info.accepted, round=info.round, num_received=info.num_received
    )


def push_reply_from_proto(msg: fed_server_pb2.PushAdapterResponse) -> PushReplyInfo:
    return PushReplyInfo(accepted=msg.accepted, round=msg.round, num_received=msg.num_received)


@_record
class PullInfo:
    client_id: int
    round: int


def pull_to_proto(info: PullInfo) -> fed_server_pb2.PullGlobalRequest:
    from fedsllm.proto import fed_server_pb2

    return fed_server_pb2.PullGlobalRequest(client_id=info.client_id, round=info.round)


def pull_from_proto(msg: fed_server_pb2.PullGlobalRequest) -> PullInfo:
    return PullInfo(client_id=msg.client_id, round=msg.round)


@_record
class StatusInfo:
    round: int
    num_rounds: int
    finished: bool
    clients_joined: tuple[int, ...]
    server_unix_s: float = 0.0
    """The fed server's clock when it answered (the run's reference clock)."""


def status_to_proto(info: StatusInfo) -> fed_server_pb2.StatusResponse:
    from fedsllm.proto import fed_server_pb2

    return fed_server_pb2.StatusResponse(
        round=info.round,
        num_rounds=info.num_rounds,
        finished=info.finished,
        clients_joined=list(info.clients_joined),
        server_unix_s=info.server_unix_s,
    )


def status_from_proto(msg: fed_server_pb2.StatusResponse) -> StatusInfo:
    return StatusInfo(
        round=msg.round,
        num_rounds=msg.num_rounds,
        finished=msg.finished,
        clients_joined=tuple(msg.clients_joined),
        server_unix_s=_finite("StatusResponse.server_unix_s", msg.server_unix_s),
    )


# ---------------------------------------------------------------- controller


@_record
class RegisterInfo:
    client_id: int
    num_samples: int
    flops: float
    """Device compute speed, FLOP/s."""
    tx_power_dbm: float
    distance_m: float
    gain_db: float


def register_to_proto(info: RegisterInfo) -> controller_pb2.RegisterRequest:
    from fedsllm.proto import controller_pb2

    return controller_pb2.RegisterRequest(
        client_id=info.client_id,
        num_samples=info.num_samples,
        flops=info.flops,
        tx_power_dbm=info.tx_power_dbm,
        distance_m=info.distance_m,
        gain_db=info.gain_db,
    )


def register_from_proto(msg: controller_pb2.RegisterRequest) -> RegisterInfo:
    if msg.num_samples == 0:
        raise WireError("RegisterRequest.num_samples", "=0, must be > 0")
    flops = _finite("RegisterRequest.flops", msg.flops)
    if flops == 0:
        raise WireError("RegisterRequest.flops", "=0.0, must be > 0")
    return RegisterInfo(
        client_id=msg.client_id,
        num_samples=msg.num_samples,
        flops=flops,
        tx_power_dbm=_finite("RegisterRequest.tx_power_dbm", msg.tx_power_dbm, minimum=None),
        distance_m=_finite("RegisterRequest.distance_m", msg.distance_m),
        gain_db=_finite("RegisterRequest.gain_db", msg.gain_db, minimum=None),
    )


@_record
class RegisterReplyInfo:
    num_registered: int
    num_expected: int


def register_reply_to_proto(info: RegisterReplyInfo) -> controller_pb2.RegisterResponse:
    from fedsllm.proto import controller_pb2

    return controller_pb2.RegisterResponse(
        num_registered=info.num_registered, num_expected=info.num_expected
    )


def register_reply_from_proto(msg: controller_pb2.RegisterResponse) -> RegisterReplyInfo:
    return RegisterReplyInfo(num_registered=msg.num_registered, num_expected=msg.num_expected)


@_record
class SubscribeInfo:
    client_id: int


def subscribe_to_proto(info: SubscribeInfo) -> controller_pb2.SubscribeRequest:
    from fedsllm.proto import controller_pb2

    return controller_pb2.SubscribeRequest(client_id=info.client_id)


def subscribe_from_proto(msg: controller_pb2.SubscribeRequest) -> SubscribeInfo:
    return SubscribeInfo(client_id=msg.client_id)


@_record
class AllocationInfo:
    version: int
    """Increases with every allocation issued."""
    round: int
    """Round from which it applies."""
    client_id: int
    policy: str
    bandwidth_hz: float
    share: float
    """Fraction of the total bandwidth, in [0, 1]."""
    uplink_bps: float
    downlink_bps: float
    num_local_steps: int
    eta: float
    """Local accuracy in (0, 1)."""
    predicted_round_s: float
    predicted_total_s: float
    issued_unix_s: float
    num_rounds: int = 0
    """Global rounds the allocation implies; 0 = unchanged."""


_ALLOC_FLOATS = (
    "bandwidth_hz",
    "uplink_bps",
    "downlink_bps",
    "predicted_round_s",
    "predicted_total_s",
    "issued_unix_s",
)


def allocation_to_proto(info: AllocationInfo) -> controller_pb2.AllocationUpdate:
    from fedsllm.proto import controller_pb2

    return controller_pb2.AllocationUpdate(
        version=info.version,
        round=info.round,
        client_id=info.client_id,
        policy=info.policy,
        share=info.share,
        num_local_steps=info.num_local_steps,
        eta=info.eta,
        num_rounds=info.num_rounds,
        **{name: getattr(info, name) for name in _ALLOC_FLOATS},
    )


def allocation_from_proto(msg: controller_pb2.AllocationUpdate) -> AllocationInfo:
    floats = {
        name: _finite(f"AllocationUpdate.{name}", getattr(msg, name)) for name in _ALLOC_FLOATS
    }
    share = _finite("AllocationUpdate.share", msg.share)
    if share > 1.0:
        raise WireError("AllocationUpdate.share", f"={share!r}, must be in [0, 1]")
    if not (0.0 < msg.eta < 1.0):
        raise WireError("AllocationUpdate.eta", f"={msg.eta!r}, must be in (0, 1)")
    if msg.num_local_steps == 0:
        raise WireError("AllocationUpdate.num_local_steps", "=0, must be >= 1")
    return AllocationInfo(
        version=msg.version,
        round=msg.round,
        client_id=msg.client_id,
        policy=msg.policy,
        share=share,
        num_local_steps=msg.num_local_steps,
        eta=msg.eta,
        num_rounds=msg.num_rounds,
        **floats,
    )


@_record
class ChannelReportInfo:
    client_id: int
    gain_db: float
    distance_m: float


def channel_report_to_proto(info: ChannelReportInfo) -> controller_pb2.ReportChannelRequest:
    from fedsllm.proto import controller_pb2

    return controller_pb2.ReportChannelRequest(
        client_id=info.client_id, gain_db=info.gain_db, distance_m=info.distance_m
    )


def channel_report_from_proto(msg: controller_pb2.ReportChannelRequest) -> ChannelReportInfo:
    return ChannelReportInfo(
        client_id=msg.client_id,
        gain_db=_finite("ReportChannelRequest.gain_db", msg.gain_db, minimum=None),
        distance_m=_finite("ReportChannelRequest.distance_m", msg.distance_m),
    )


@_record
class ChannelReplyInfo:
    version: int
    """Version of the allocation in force after the report."""


def channel_reply_to_proto(info: ChannelReplyInfo) -> controller_pb2.ReportChannelResponse:
    from fedsllm.proto import controller_pb2

    return controller_pb2.ReportChannelResponse(version=info.version)


def channel_reply_from_proto(msg: controller_pb2.ReportChannelResponse) -> ChannelReplyInfo:
    return ChannelReplyInfo(version=msg.version)
