"""The Controller through a real gRPC server on port 0, and as its own process:
Register, a Subscribe stream that gets every new allocation and ends with
the run, ReportChannel, and bad requests refused with the right status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fed_server.controller import Controller
from fed_server.controller_service import ControllerService
from fedsllm.config import load_scenario
from fedsllm.model.counts import count_scenario
from fedsllm.proto import controller_pb2 as pb
from fedsllm.proto import controller_pb2_grpc as pb_grpc
from fedsllm.security.identity import Identity, TokenTable, calling_as
from fedsllm.trace import read_records
from fedsllm.wire.messages import allocation_from_proto
from fedsllm.wire.rpc import (
    CONTROLLER_SERVICE,
    Security,
    create_server,
    free_port,
    make_channel,
    stop_server,
    wait_healthy,
)

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["data.seq_len=32", "clients.num_clients=3", "policy.name='optimal'", "seed=5"]


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(None, OVERRIDES)


@pytest.fixture(scope="module")
def counts(scenario):
    return count_scenario(scenario)


@pytest.fixture
def served(scenario, counts) -> Iterator[tuple[pb_grpc.ControllerStub, Controller]]:
    controller = Controller(scenario, counts=counts)
    controller.start_round(0)
    service = ControllerService(controller, poll_s=0.05)
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: pb_grpc.add_ControllerServicer_to_server(service, s)],
        allow_unauthenticated=True,
    )
    channel = make_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ControllerStub(channel), controller
    finally:
        controller.close()
        channel.close()
        stop_server(server, grace_s=0.5)


def _register_request(scenario, k: int, **changes) -> pb.RegisterRequest:
    profile = scenario.profile(k)
    values = {
        "client_id": k,
        "num_samples": 50,
        "flops": profile.flops,
        "tx_power_dbm": profile.tx_power_dbm,
        "gain_db": -100.0,
        **changes,
    }
    return pb.RegisterRequest(**values)


def test_subscribe_streams_every_new_allocation(served, scenario) -> None:
    stub, controller = served
    reply = stub.Register(_register_request(scenario, 0), timeout=5)
    assert (reply.num_registered, reply.num_expected) == (1, 3)
    stub.Register(_register_request(scenario, 2), timeout=5)
    stream = stub.Subscribe(pb.SubscribeRequest(client_id=2), timeout=20)
    first = allocation_from_proto(next(stream))
    assert first == controller.current(2) and first.round == 0 and first.client_id == 2

    controller.start_round(1)
    second = allocation_from_proto(next(stream))
    assert second.round == 1 and second.version > first.version
    assert second == controller.current(2)

    weaker = stub.ReportChannel(pb.ReportChannelRequest(client_id=2, gain_db=-115.0), timeout=5)
    third = allocation_from_proto(next(stream))
    assert third.version == weaker.version > second.version
    assert third.bandwidth_hz > second.bandwidth_hz

    controller.close()
    assert list(stream) == []  # the stream ends with the run


def test_subscribe_before_first_round_waits_for_it(scenario, counts) -> None:
    controller = Controller(scenario, counts=counts)
    service = ControllerService(controller, poll_s=0.05)
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: pb_grpc.add_ControllerServicer_to_server(service, s)],
        allow_unauthenticated=True,
    )
    channel = make_channel(f"127.0.0.1:{port}")
    try:
        stream = pb_grpc.ControllerStub(channel).Subscribe(
            pb.SubscribeRequest(client_id=1), timeout=20
        )
        controller.start_round(0)
        info = allocation_from_proto(next(stream))
        assert (info.version, info.round, info.client_id) == (1, 0, 1)
        stream.cancel()
    finally:
        controller.close()
        channel.close()
        stop_server(server, grace_s=0.5)


class _FakeContext:
    """Just enough of grpc.ServicerContext for Subscribe: the client leaves after `active` polls."""

    def __init__(self, active: int) -> None:
        self.active = active
        self.callbacks: list = []

    def is_active(self) -> bool:
        self.active -= 1
        return self.active >= 0

    def add_callback(self, fn) -> bool:
        self.callbacks.append(fn)
        return True


def test_subscribe_ends_when_the_client_leaves(scenario, counts) -> None:
    controller = Controller(scenario, counts=counts)
    controller.start_round(0)
    service = ControllerService(controller, poll_s=0.01)
    context = _FakeContext(active=3)
    with calling_as(Identity.client(0)):  # the identity the interceptor would derive
        updates = list(service.Subscribe(pb.SubscribeRequest(client_id=0), context))
    # One update at once, then idle polls until the client is gone; the run is still open.
    assert [allocation_from_proto(u) for u in updates] == [controller.current(0)]
    assert context.active < 0 and not controller.closed
    # The waiter is woken on cancel (next to the stream-slot release of the limits).
    assert controller.wake in context.callbacks
    controller.close()


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (
            lambda stub, sc: stub.ReportChannel(
                pb.ReportChannelRequest(client_id=9, gain_db=-90.0), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ReportChannelRequest.client_id",
        ),
        (
            lambda stub, sc: stub.ReportChannel(
                pb.ReportChannelRequest(client_id=1, gain_db=float("nan")), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ReportChannelRequest.gain_db",
        ),
        (
            lambda stub, sc: stub.ReportChannel(
                pb.ReportChannelRequest(client_id=1, gain_db=-90.0), timeout=5
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "client_id=1",
        ),
        (
            lambda stub, sc: stub.Register(_register_request(sc, 3), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RegisterRequest.client_id",
        ),
        (
            lambda stub, sc: stub.Register(_register_request(sc, 0, flops=float("inf")), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RegisterRequest.flops",
        ),
        (
            lambda stub, sc: next(stub.Subscribe(pb.SubscribeRequest(client_id=3), timeout=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "SubscribeRequest.client_id",
        ),
    ],
)
def test_bad_requests_get_a_status_and_change_nothing(served, scenario, call, code, field):
    stub, controller = served
    before = controller.snapshot()
    with pytest.raises(grpc.RpcError) as err:
        call(stub, scenario)
    assert err.value.code() == code
    assert field in err.value.details()
    assert controller.snapshot() == before


def test_a_change_the_store_cannot_save_is_unavailable(served, scenario) -> None:
    """A full disk under the controller's state (its store raises StorageError)
    reaches the caller as UNAVAILABLE, to retry, and changes nothing; the same
    Register once the disk has room is taken. The service used to list the
    errors it refuses by hand, without StorageError: the caller got UNKNOWN."""
    from fedsllm.state.store import StorageError

    stub, controller = served
    full = True

    def save(_state: dict) -> None:
        if full:
            raise StorageError("controller.json: No space left on device")

    controller.on_change = save
    before = controller.snapshot()
    with pytest.raises(grpc.RpcError) as err:
        stub.Register(_register_request(scenario, 1), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert controller.snapshot() == before
    full = False
    reply = stub.Register(_register_request(scenario, 1), timeout=5)
    assert reply.num_registered == 1


@pytest.mark.slow
def test_controller_main_serves_until_sigterm(tmp_path: Path, scenario) -> None:
    doc = {"scenario_hash": "h1", **scenario.to_dict()}
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(doc))
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Its peers' tokens come from FEDSLLM_PEER_TOKENS, as the launcher passes them.
    tokens = TokenTable.generate([Identity.client(0)])
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps(tokens.to_identity_map()))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "FEDSLLM_PEER_TOKENS": str(peers),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fed_server.controller_main",
            "--scenario-json",
            str(path),
            "--bind",
            address,
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_healthy(address, timeout_s=60.0, service=CONTROLLER_SERVICE)
        channel = make_channel(address, Security(token=tokens.token_for(Identity.client(0))))
        stream = pb_grpc.ControllerStub(channel).Subscribe(
            pb.SubscribeRequest(client_id=0), timeout=30
        )
        info = allocation_from_proto(next(stream))
        assert (info.round, info.client_id, info.policy) == (0, 0, "optimal")
        proc.send_signal(signal.SIGTERM)
        assert list(stream) == []  # closing the controller ends the stream
        assert proc.wait(timeout=20) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read() if proc.stdout else ""
    assert "serving Controller" in output
    records = read_records(tmp_path / "run" / "trace")
    assert sum(r["name"] == "allocation" and r["round"] == 0 for r in records) == 3
