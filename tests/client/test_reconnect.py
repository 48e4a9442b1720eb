"""The client survives its servers going away: every call reconnects on
UNAVAILABLE with backoff and resumes where it was, and a refused push is read
by its status (fedsllm/wire/status.py) and its reason word.

The servers here are in-process gRPC servers on free ports: a fake main
server that is stopped while it holds a step and started again on the same
port, a fake fed server whose push handler refuses with the real status
table, and the real controller restarted under an allocation follower.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import torch

from client.loop import StragglerError
from client.remote import AllocationFollower, FedServerClient, MainServerStream, push_outcome
from fedsllm.errors import StateError
from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc, main_server_pb2_grpc
from fedsllm.state.errors import (
    ConflictingUpdateError,
    DuplicateUpdateError,
    LateUpdateError,
    NotJoinedError,
    RoundClosedError,
    RoundNotOpenError,
    RunFinishedError,
)
from fedsllm.trace import Tracer
from fedsllm.wire.adapters import GlobalHeaderInfo, pull_responses, read_push
from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo, TrainWelcomeInfo
from fedsllm.wire.rpc import (
    ReconnectError,
    RetryPolicy,
    create_server,
    free_port,
    make_channel,
    stop_server,
)
from fedsllm.wire.status import abort_for
from fedsllm.wire.tensors import TensorSpec, WireLimits, tensor_to_frame
from fedsllm.wire.train import read_uplink, step_download_responses, train_response
from tests.loopback import serving

FAST = RetryPolicy(seed=0, base_s=0.02, cap_s=0.2, budget_s=60.0)
"""Short waits, a budget no healthy test comes near."""


def _serve(address: str, add: Callable[[grpc.Server], None]) -> grpc.Server:
    server, _ = create_server(address, [add], allow_unauthenticated=True)
    return server


# ===================================================================== Train stream
def _uplink_specs(_header: StepHeaderInfo) -> list[TensorSpec]:
    floats = frozenset({"float32"})
    return [
        TensorSpec("activations", floats, ("B", "T", None), require_finite=True),
        TensorSpec("attention_mask", frozenset({"int64"}), ("B", "T")),
        TensorSpec("labels", frozenset({"int64"}), ("B", "T")),
    ]


class FakeMainServer(main_server_pb2_grpc.MainServerServicer):
    """Welcomes every hello and answers a train step with gradient = 2 * activations;
    with `hold`, it records the step and never answers (until the call ends)."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.hellos = 0
        self.steps: list[tuple[int, int]] = []
        self.uploads: list[tuple[tuple[int, int], dict[str, bytes]]] = []
        """Every step received: its (round, step) key and each tensor's bytes."""
        self.got_step = threading.Event()
        self.num_ended = 0
        self.ended = threading.Event()
        """Set when a Train call ends (on either side)."""

    def _end(self) -> None:
        self.num_ended += 1
        self.ended.set()

    def Train(self, request_iterator: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        context.add_callback(self._end)
        for item in read_uplink(request_iterator, _uplink_specs, WireLimits()):
            if not hasattr(item, "header"):
                self.hellos += 1
                yield train_response(
                    TrainWelcomeInfo(
                        client_id=item.client_id,
                        scenario_hash=item.scenario_hash,
                        max_tensor_bytes=WireLimits().max_tensor_bytes,
                    )
                )
                continue
            key = (item.header.round, item.header.step)
            self.steps.append(key)
            tensors = {n: item.tensor(n).numpy().tobytes() for n in item.header.tensor_names}
            self.uploads.append((key, tensors))
            self.got_step.set()
            if self.hold:
                ended = threading.Event()
                context.add_callback(ended.set)
                ended.wait()  # the server dies under this call
                return
            acts = item.tensor("activations")
            result = StepResultInfo(
                round=item.header.round,
                step=item.header.step,
                loss=1.5,
                num_tokens=4,
                server_compute_s=0.0,
                server_receive_s=item.receive_s,
                tensor_names=("activations_grad",),
            )
            yield from step_download_responses(
                result, [tensor_to_frame("activations_grad", acts * 2)], 4096
            )


def _add_main(servicer: FakeMainServer) -> Callable[[grpc.Server], None]:
    return lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(servicer, s)


def test_train_stream_reconnects_and_resends_the_step_in_flight() -> None:
    address = f"127.0.0.1:{free_port()}"
    first, second = FakeMainServer(hold=True), FakeMainServer(hold=False)
    servers = [_serve(address, _add_main(first))]
    retried: list[str] = []
    policy = RetryPolicy(
        seed=0, base_s=0.02, cap_s=0.2, budget_s=60.0, on_retry=lambda c, _w: retried.append(c)
    )

    def restart() -> None:
        # The main server dies while it holds the step, and comes back on its port.
        assert first.got_step.wait(30)
        stop_server(servers[0], grace_s=0)
        servers.append(_serve(address, _add_main(second)))

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 2, 4, generator=g)
    mask = torch.ones(2, 2, dtype=torch.int64)
    labels = torch.randint(0, 9, (2, 2), generator=g)
    restarter = threading.Thread(target=restart)
    try:
        stream = MainServerStream(address, 3, "h", "float32", 4096, retry=policy)
        restarter.start()
        stream.send_step(1, 7, True, acts, mask, labels)
        reply, _ = stream.receive_reply(1, 7)
        # The next step goes over the new stream as if nothing happened.
        stream.send_step(1, 8, True, acts, mask, labels)
        stream.receive_reply(1, 8)
        stream.close()
    finally:
        restarter.join()
        for server in servers:
            stop_server(server, grace_s=0)
    # What the client must do: send the step in flight again on the new stream,
    # under the same (round, step) key and with the same bytes, then go on.
    # (Whether a server computes a re-sent step again or answers it from a
    # cache is the server's business, not asserted here.)
    keys = [key for key, _ in first.uploads + second.uploads]
    assert keys == [(1, 7), (1, 7), (1, 8)]
    (_, lost), (_, resent) = first.uploads[0], second.uploads[0]
    assert set(lost) == {"activations", "attention_mask", "labels"} and resent == lost
    assert second.hellos == 1
    assert torch.equal(reply.grad, acts * 2) and reply.loss == 1.5
    assert stream.num_reconnects == 1 and retried and set(retried) == {"Train"}


def test_train_stream_waits_for_a_main_server_that_is_not_up_yet() -> None:
    address = f"127.0.0.1:{free_port()}"
    servicer = FakeMainServer(hold=False)
    servers: list[grpc.Server] = []
    waited: list[float] = []

    def start_on_first_retry(_call: str, wait_s: float) -> None:
        waited.append(wait_s)
        if not servers:
            servers.append(_serve(address, _add_main(servicer)))

    policy = RetryPolicy(seed=0, base_s=0.02, cap_s=0.2, on_retry=start_on_first_retry)
    try:
        stream = MainServerStream(address, 0, "h", "float32", 4096, retry=policy)
        stream.close()
    finally:
        for server in servers:
            stop_server(server, grace_s=0)
    assert waited and servicer.hellos == 1


# ===================================================================== fed server
class FakeFedServer(fed_server_pb2_grpc.FedServerServicer):
    """Join and PushAdapter with a ledger keyed by (client, round, attempt).

    `refuse` is the refusals of the first pushes, in order: an UpdateRefused
    (through the real status table, reason word included), "unavailable" (the
    push is read, counted, and the reply lost: the server "died" before
    answering), "deadline" (counted, then the call's deadline ran out before
    the reply), or None (accept)."""

    def __init__(self, refuse: list[Any]) -> None:
        self.refuse = list(refuse)
        self.calls: list[str] = []
        self.keys: list[tuple[int, int, int]] = []
        self.ledger: set[tuple[int, int, int]] = set()
        self.blobs: list[bytes] = []

    def Join(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.calls.append("join")
        return fed_server_pb2.JoinResponse(current_round=2, num_rounds=5)

    def PushAdapter(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        header, blob = read_push(request_iterator)
        key = (header.client_id, header.round, header.attempt)
        self.calls.append("push")
        self.keys.append(key)
        self.blobs.append(blob)
        refusal = self.refuse.pop(0) if self.refuse else None
        if refusal == "unavailable":
            self.ledger.add(key)
            context.abort(grpc.StatusCode.UNAVAILABLE, "stored, then lost the reply")
        if refusal == "deadline":
            self.ledger.add(key)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "stored, then ran out of time")
        if refusal is not None:
            abort_for(context, refusal)
        replayed = key in self.ledger
        self.ledger.add(key)
        return fed_server_pb2.PushAdapterResponse(
            accepted=True, round=header.round, replayed=replayed
        )


@pytest.fixture
def fed_server() -> Iterator[Callable[[list[Any]], tuple[FedServerClient, FakeFedServer]]]:
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []

    def start(refuse: list[Any]) -> tuple[FedServerClient, FakeFedServer]:
        fake = FakeFedServer(refuse)
        server, port = create_server(
            "127.0.0.1:0",
            [lambda s: fed_server_pb2_grpc.add_FedServerServicer_to_server(fake, s)],
            allow_unauthenticated=True,
        )
        servers.append(server)
        channel = make_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        client = FedServerClient(channel, 4, "h", 1024, retry=FAST)
        client.num_samples = 10
        return client, fake

    try:
        yield start
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            stop_server(server, grace_s=0)


BLOB = bytes(range(256)) * 9


def test_push_retried_on_unavailable_is_counted_once(fed_server) -> None:
    client, fake = fed_server(["unavailable"])
    client.push_adapter(2, BLOB, attempt=1)
    assert fake.keys == [(4, 2, 1), (4, 2, 1)]  # the same key again, whole blob both times
    assert fake.blobs == [BLOB, BLOB]
    assert fake.ledger == {(4, 2, 1)}


def test_push_past_its_deadline_is_sent_again_under_the_same_key(fed_server) -> None:
    client, fake = fed_server(["deadline"])
    ack = client.push_adapter(2, BLOB, attempt=1)
    assert fake.keys == [(4, 2, 1), (4, 2, 1)] and fake.blobs == [BLOB, BLOB]
    assert fake.ledger == {(4, 2, 1)}
    assert ack.replayed  # the server had counted the first one


def test_not_joined_joins_again_then_pushes_again(fed_server) -> None:
    client, fake = fed_server([NotJoinedError(4, 2, "unknown client")])
    client.push_adapter(2, BLOB)
    assert fake.calls == ["push", "join", "push"]
    assert fake.ledger == {(4, 2, 0)}


def test_not_joined_for_ever_is_an_error(fed_server) -> None:
    refusals = [NotJoinedError(4, 2, "unknown client")] * 10
    client, fake = fed_server(refusals)
    with pytest.raises(StateError, match="not_joined") as info:
        client.push_adapter(2, BLOB)
    assert not isinstance(info.value, StragglerError)
    assert fake.calls.count("join") == FedServerClient.MAX_REJOINS


@pytest.mark.parametrize(
    "refusal",
    [
        LateUpdateError(4, 2, "past the deadline"),
        RoundClosedError(4, 2, "closed"),
        RoundNotOpenError(4, 2, "not open"),
        RunFinishedError(4, 2, "finished"),
    ],
    ids=lambda e: e.reason,
)
def test_out_of_range_is_a_straggler(fed_server, refusal) -> None:
    client, fake = fed_server([refusal])
    with pytest.raises(StragglerError) as info:
        client.push_adapter(2, BLOB)
    assert info.value.reason == refusal.reason and info.value.round_index == 2
    assert fake.calls == ["push"]  # not retried


def test_duplicate_counts_as_accepted(fed_server) -> None:
    client, fake = fed_server([DuplicateUpdateError(4, 2, accepted_attempt=0)])
    ack = client.push_adapter(2, BLOB, attempt=1)  # no error: attempt 0 already counts
    assert (ack.attempt, ack.seq, ack.counted_before) == (1, 0, True)
    assert fake.calls == ["push"]


def test_conflict_is_a_real_error(fed_server) -> None:
    client, _ = fed_server([ConflictingUpdateError(4, 2, "other bytes")])
    with pytest.raises(StateError, match="conflict") as info:
        client.push_adapter(2, BLOB)
    assert not isinstance(info.value, StragglerError)


@pytest.mark.parametrize(
    ("code", "reason", "outcome"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "not_joined", "rejoin"),
        (grpc.StatusCode.FAILED_PRECONDITION, None, "error"),  # e.g. a wrong scenario hash
        (grpc.StatusCode.OUT_OF_RANGE, "late", "straggler"),
        (grpc.StatusCode.OUT_OF_RANGE, None, "straggler"),
        (grpc.StatusCode.ALREADY_EXISTS, "duplicate", "accepted"),
        (grpc.StatusCode.ALREADY_EXISTS, "conflict", "error"),
        (grpc.StatusCode.INVALID_ARGUMENT, None, "error"),
    ],
)
def test_push_outcome_table(code, reason, outcome) -> None:
    assert push_outcome(code, reason) == outcome


class SlowPull(fed_server_pb2_grpc.FedServerServicer):
    """PullGlobal that lets the first `num_slow` calls run into their deadline
    (the round is still open), then answers."""

    def __init__(self, num_slow: int) -> None:
        self.num_slow = num_slow
        self.num_calls = 0

    def PullGlobal(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        self.num_calls += 1
        if self.num_calls <= self.num_slow:
            ended = threading.Event()
            context.add_callback(ended.set)
            ended.wait()  # the client's deadline ends the call
            return
        header = GlobalHeaderInfo(round=request.round, has_adapter=True, total_bytes=len(BLOB))
        yield from pull_responses(header, BLOB, 1000)


def test_pull_asks_again_after_a_deadline() -> None:
    servicer = SlowPull(num_slow=2)
    with serving(
        lambda s: fed_server_pb2_grpc.add_FedServerServicer_to_server(servicer, s), grace_s=0
    ) as channel:
        client = FedServerClient(channel, 0, "h", 1024, pull_timeout_s=0.2, retry=FAST)
        assert client.pull_global(3).read() == (3, BLOB)
    assert servicer.num_calls == 3


def test_reconnect_budget_spent_is_a_clear_error() -> None:
    # Nothing listens on the port: Join retries until its budget is spent.
    policy = RetryPolicy(seed=0, base_s=0.05, cap_s=0.1, budget_s=0.5)
    with make_channel(f"127.0.0.1:{free_port()}") as channel:
        client = FedServerClient(channel, 0, "h", 1024, rpc_timeout_s=1.0, retry=policy)
        with pytest.raises(ReconnectError, match=r"Join: still UNAVAILABLE after .* giving up"):
            client.join(10)


# ===================================================================== controller
def _controller(address: str, round_index: int) -> tuple[Any, grpc.Server]:
    from fed_server.controller import Controller
    from fed_server.controller_service import ControllerService
    from fedsllm.config import load_scenario
    from fedsllm.proto import controller_pb2_grpc

    scenario = load_scenario(overrides=["policy.name='equal'", "clients.num_clients=2"])
    ctl = Controller(scenario)
    for r in range(round_index + 1):
        ctl.start_round(r)
    service = ControllerService(ctl, poll_s=0.05)
    server = _serve(
        address, lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(service, s)
    )
    return ctl, server


def test_follower_registers_and_subscribes_again_after_a_restart() -> None:
    from fedsllm.roles import register_info

    address = f"127.0.0.1:{free_port()}"
    ctl, server = _controller(address, 0)
    running = [(ctl, server)]
    try:
        with make_channel(address) as channel:
            follower = AllocationFollower(
                channel,
                register_info(ctl.scenario, 1, 100),
                lambda _info: None,
                Tracer(None, "client", client_id=1),
                wait_timeout_s=60,
                retry=FAST,
            )
            assert follower.local_steps(0) == ctl.plan.num_local_steps
            ctl.close()
            stop_server(server, grace_s=0)
            # A new controller process, already at round 1: it knows this client
            # only once it registers again.
            running.append(_controller(address, 1))
            assert follower.local_steps(1) == running[-1][0].plan.num_local_steps
            follower.close()
    finally:
        for ctl, server in running:
            ctl.close()
            stop_server(server, grace_s=0)
