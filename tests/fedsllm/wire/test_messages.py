"""Every x_to_proto / x_from_proto pair round-trips, and the from side rejects
what a peer could get wrong."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

from fedsllm.errors import WireError
from fedsllm.proto import controller_pb2, fed_server_pb2, main_server_pb2
from fedsllm.wire import messages as m

CASES: list[tuple[Any, Callable[[Any], Any], Callable[[Any], Any], type]] = [
    (
        m.TrainHelloInfo(client_id=3, scenario_hash="abc123", wire_dtype="bfloat16"),
        m.hello_to_proto,
        m.hello_from_proto,
        main_server_pb2.TrainHello,
    ),
    (
        m.TrainWelcomeInfo(client_id=3, scenario_hash="abc123", max_tensor_bytes=2**29),
        m.welcome_to_proto,
        m.welcome_from_proto,
        main_server_pb2.TrainWelcome,
    ),
    (
        m.StepHeaderInfo(
            round=4,
            step=7,
            mode="eval",
            downlink_bps=12.5e6,
            tensor_names=("activations", "attention_mask", "labels"),
            sent_unix_s=1795570138.25,
            initial_adapter=True,
        ),
        m.step_header_to_proto,
        m.step_header_from_proto,
        main_server_pb2.StepHeader,
    ),
    (
        m.StepHeaderInfo(
            round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=("activations",)
        ),
        m.step_header_to_proto,
        m.step_header_from_proto,
        main_server_pb2.StepHeader,
    ),
    (
        m.StepResultInfo(
            round=2,
            step=1,
            loss=3.25,
            num_tokens=511,
            server_compute_s=0.01,
            server_forward_s=0.004,
            server_backward_s=0.005,
            server_update_s=0.001,
            server_queue_s=0.5,
            server_receive_s=0.2,
            tensor_names=("activations_grad",),
        ),
        m.step_result_to_proto,
        m.step_result_from_proto,
        main_server_pb2.StepResult,
    ),
    (
        m.JoinInfo(client_id=9, num_samples=1234, scenario_hash="h"),
        m.join_to_proto,
        m.join_from_proto,
        fed_server_pb2.JoinRequest,
    ),
    (
        m.JoinReplyInfo(current_round=2, num_rounds=10, num_local_steps=5),
        m.join_reply_to_proto,
        m.join_reply_from_proto,
        fed_server_pb2.JoinResponse,
    ),
    (
        m.PushReplyInfo(accepted=False, round=3, num_received=2),
        m.push_reply_to_proto,
        m.push_reply_from_proto,
        fed_server_pb2.PushAdapterResponse,
    ),
    (
        m.PullInfo(client_id=1, round=6),
        m.pull_to_proto,
        m.pull_from_proto,
        fed_server_pb2.PullGlobalRequest,
    ),
    (
        m.StatusInfo(
            round=3, num_rounds=5, finished=True, clients_joined=(0, 2, 5), server_unix_s=12.75
        ),
        m.status_to_proto,
        m.status_from_proto,
        fed_server_pb2.StatusResponse,
    ),
    (
        m.RegisterInfo(
            client_id=4,
            num_samples=77,
            flops=2.5e9,
            tx_power_dbm=-3.0,
            distance_m=120.5,
            gain_db=-97.25,
        ),
        m.register_to_proto,
        m.register_from_proto,
        controller_pb2.RegisterRequest,
    ),
    (
        m.RegisterReplyInfo(num_registered=3, num_expected=4),
        m.register_reply_to_proto,
        m.register_reply_from_proto,
        controller_pb2.RegisterResponse,
    ),
    (
        m.SubscribeInfo(client_id=11),
        m.subscribe_to_proto,
        m.subscribe_from_proto,
        controller_pb2.SubscribeRequest,
    ),
    (
        m.AllocationInfo(
            version=17,
            round=2,
            client_id=1,
            policy="optimal",
            bandwidth_hz=1.25e6,
            share=0.125,
            uplink_bps=3.5e6,
            downlink_bps=7.25e6,
            num_local_steps=6,
            eta=0.35,
            predicted_round_s=12.5,
            predicted_total_s=250.0,
            issued_unix_s=1.7e9 + 0.125,
            num_rounds=20,
        ),
        m.allocation_to_proto,
        m.allocation_from_proto,
        controller_pb2.AllocationUpdate,
    ),
    (
        m.ChannelReportInfo(client_id=2, gain_db=-101.5, distance_m=300.0),
        m.channel_report_to_proto,
        m.channel_report_from_proto,
        controller_pb2.ReportChannelRequest,
    ),
    (
        m.ChannelReplyInfo(version=5),
        m.channel_reply_to_proto,
        m.channel_reply_from_proto,
        controller_pb2.ReportChannelResponse,
    ),
]


@pytest.mark.parametrize(
    ("info", "to_proto", "from_proto", "pb_type"), CASES, ids=[type(c[0]).__name__ for c in CASES]
)
def test_round_trip(info: Any, to_proto: Callable, from_proto: Callable, pb_type: type) -> None:
    msg = to_proto(info)
    assert isinstance(msg, pb_type)
    # Through bytes, as on the wire.
    again = from_proto(pb_type.FromString(msg.SerializeToString()))
    assert again == info


def test_cases_set_every_defaulted_field() -> None:
    """A field the cases leave at its default would pass the round trip even if
    x_to_proto dropped it; so some case of each record sets every such field."""
    for record in {type(c[0]) for c in CASES}:
        infos = [c[0] for c in CASES if type(c[0]) is record]
        for f in dataclasses.fields(record):
            if f.default is dataclasses.MISSING or f.name == "wire_version":
                continue  # one valid value; see test_train_wire_version
            assert any(getattr(i, f.name) != f.default for i in infos), (
                f"{record.__name__}.{f.name}"
            )


@pytest.mark.parametrize(
    ("to_proto", "from_proto", "info", "field"),
    [
        (
            m.hello_to_proto,
            m.hello_from_proto,
            m.TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32"),
            "TrainHello.wire_version",
        ),
        (
            m.welcome_to_proto,
            m.welcome_from_proto,
            m.TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=1),
            "TrainWelcome.wire_version",
        ),
    ],
)
def test_train_wire_version(
    to_proto: Callable, from_proto: Callable, info: Any, field: str
) -> None:
    """Sent on both sides; version 2 only: a version-1 peer (1, or unset: from
    before versioning) and any other version are refused, naming the field."""
    msg = to_proto(info)
    assert msg.wire_version == m.TRAIN_WIRE_VERSION == 2
    assert from_proto(msg).wire_version == 2
    for version, shown in ((0, 1), (1, 1), (3, 3)):
        msg.wire_version = version
        with pytest.raises(WireError) as err:
            from_proto(msg)
        assert err.value.field == field
        assert f"={shown}, this side speaks 2 only" in str(err.value)


def test_nan_loss_is_carried() -> None:
    info = m.StepResultInfo(round=0, step=0, loss=float("nan"), num_tokens=1, server_compute_s=0.0)
    assert math.isnan(m.step_result_from_proto(m.step_result_to_proto(info)).loss)


@pytest.mark.parametrize(
    ("from_proto", "msg", "field", "needle"),
    [
        (
            m.hello_from_proto,
            main_server_pb2.TrainHello(
                scenario_hash="h", wire_dtype="int8", wire_version=m.TRAIN_WIRE_VERSION
            ),
            "TrainHello.wire_dtype",
            "'int8'",
        ),
        (
            m.hello_from_proto,
            main_server_pb2.TrainHello(wire_dtype="float32", wire_version=m.TRAIN_WIRE_VERSION),
            "TrainHello.scenario_hash",
            "empty",
        ),
        (
            m.step_header_from_proto,
            main_server_pb2.StepHeader(tensor_names=["a"]),
            "StepHeader.mode",
            "=0",
        ),
        (
            m.step_header_from_proto,
            main_server_pb2.StepHeader(
                mode=main_server_pb2.STEP_MODE_TRAIN, downlink_bps=-1.0, tensor_names=["a"]
            ),
            "StepHeader.downlink_bps",
            "=-1.0",
        ),
        (
            m.step_header_from_proto,
            main_server_pb2.StepHeader(
                mode=main_server_pb2.STEP_MODE_TRAIN, downlink_bps=float("inf"), tensor_names=["a"]
            ),
            "StepHeader.downlink_bps",
            "=inf",
        ),
        (
            m.step_header_from_proto,
            main_server_pb2.StepHeader(
                mode=main_server_pb2.STEP_MODE_TRAIN, tensor_names=["a", "a"]
            ),
            "StepHeader.tensor_names",
            "unique",
        ),
        (
            m.step_result_from_proto,
            main_server_pb2.StepResult(server_queue_s=float("nan")),
            "StepResult.server_queue_s",
            "=nan",
        ),
        (
            m.join_from_proto,
            fed_server_pb2.JoinRequest(scenario_hash="h"),
            "JoinRequest.num_samples",
            "=0",
        ),
        (
            m.register_from_proto,
            controller_pb2.RegisterRequest(num_samples=1, flops=0.0),
            "RegisterRequest.flops",
            "=0.0",
        ),
        (
            m.register_from_proto,
            controller_pb2.RegisterRequest(num_samples=1, flops=1.0, distance_m=-5.0),
            "RegisterRequest.distance_m",
            "=-5.0",
        ),
        (
            m.allocation_from_proto,
            controller_pb2.AllocationUpdate(share=1.5, eta=0.5, num_local_steps=1),
            "AllocationUpdate.share",
            "=1.5",
        ),
        (
            m.allocation_from_proto,
            controller_pb2.AllocationUpdate(share=0.5, eta=1.0, num_local_steps=1),
            "AllocationUpdate.eta",
            "=1.0",
        ),
        (
            m.allocation_from_proto,
            controller_pb2.AllocationUpdate(share=0.5, eta=0.5, num_local_steps=0),
            "AllocationUpdate.num_local_steps",
            "=0",
        ),
        (
            m.allocation_from_proto,
            controller_pb2.AllocationUpdate(
                share=0.5, eta=0.5, num_local_steps=1, uplink_bps=float("nan")
            ),
            "AllocationUpdate.uplink_bps",
            "=nan",
        ),
    ],
)
def test_from_proto_rejects(from_proto: Callable, msg: Any, field: str, needle: str) -> None:
    with pytest.raises(WireError) as info:
        from_proto(msg)
    assert info.value.field == field
    assert needle in str(info.value)


def test_header_to_proto_rejects_unknown_mode() -> None:
    bad = m.StepHeaderInfo(round=0, step=0, mode="infer", downlink_bps=0.0, tensor_names=("a",))
    with pytest.raises(WireError, match="'infer'"):
        m.step_header_to_proto(bad)


@pytest.mark.parametrize("name", m._RESULT_TIMES)
@pytest.mark.parametrize("bad", [math.nan, -1e-9, math.inf, -math.inf])
def test_result_times_refused_each_by_name(name: str, bad: float) -> None:
    """Every timing of a StepResult is checked (finite, >= 0), and the error
    names the one that is wrong, whichever it is."""
    with pytest.raises(WireError) as err:
        m.step_result_from_proto(main_server_pb2.StepResult(**{name: bad}))
    assert err.value.field == f"StepResult.{name}"


def test_result_times_kept_as_sent() -> None:
    times = dict(zip(m._RESULT_TIMES, (0.5, 0.0, -0.0, 1e300, 2.5e-9, 3.0), strict=True))
    info = m.step_result_from_proto(main_server_pb2.StepResult(round=2, step=7, **times))
    assert {name: getattr(info, name) for name in m._RESULT_TIMES} == times
    assert math.copysign(1.0, info.server_backward_s) == -1.0  # -0.0 passes as itself
