"""The client's allocation follower against a real controller over gRPC: pushes
are applied and recorded, and a failure in applying one ends the wait at once
with the cause instead of a long timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from client.remote import AllocationFollower
from fed_server.controller import Controller
from fed_server.controller_service import ControllerService
from fedsllm.config import load_scenario
from fedsllm.proto import controller_pb2_grpc
from fedsllm.roles import register_info
from fedsllm.trace import Tracer
from fedsllm.wire.rpc import create_server, make_channel, stop_server


@pytest.fixture
def controller() -> Iterator[tuple[str, Controller]]:
    scenario = load_scenario(overrides=["policy.name='equal'", "clients.num_clients=2"])
    ctl = Controller(scenario)
    ctl.start_round(0)
    service = ControllerService(ctl, poll_s=0.05)
    server, port = create_server(
        "127.0.0.1:0", [lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(service, s)]
    )
    try:
        yield f"127.0.0.1:{port}", ctl
    finally:
        ctl.close()
        stop_server(server, grace_s=0.5)


def test_follower_applies_pushes(controller) -> None:
    address, ctl = controller
    applied = []
    scenario = ctl.scenario
    with make_channel(address) as channel:
        follower = AllocationFollower(
            channel,
            register_info(scenario, 1, 100),
            applied.append,
            Tracer(None, "client", client_id=1),
            wait_timeout_s=10,
        )
        assert follower.local_steps(0) == ctl.plan.num_local_steps
        ctl.start_round(1)
        assert follower.local_steps(1) == ctl.plan.num_local_steps
        follower.close()
    assert [a.round for a in applied][-1] == 1
    assert all(a.client_id == 1 for a in applied)
    assert applied[-1].uplink_bps == ctl.current(1).uplink_bps


def test_failure_to_apply_ends_the_wait_with_the_cause(controller) -> None:
    address, ctl = controller

    def refuse(_info) -> None:
        raise ValueError("shaper refused the rate")

    with make_channel(address) as channel:
        follower = AllocationFollower(
            channel,
            register_info(ctl.scenario, 0, 100),
            refuse,
            Tracer(None, "client", client_id=0),
            wait_timeout_s=60,
        )
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="shaper refused the rate"):
            follower.local_steps(0)
        assert time.monotonic() - t0 < 30  # not the 60 s timeout
        follower.close()
