"""FedServer's answers to faults through a real gRPC server on port 0: retried
pushes, refusals that say what happened, a stopping server, a restarted peer."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fed_server.aggregate import parse_adapter, serialize_adapter
from fed_server.rounds import STATE_DIR, RoundState
from fed_server.service import STOPPING, FedServerService
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.security.limits import PeerLimits
from fedsllm.state import FedServerStore
from fedsllm.trace import Tracer
from fedsllm.wire.adapters import PushHeaderInfo, push_requests, read_pull
from fedsllm.wire.rpc import create_server, make_channel, stop_server
from fedsllm.wire.status import refusal_of
from tests.fed_server._stores import FullDisk

HASH = "abc123"


@dataclass
class Fed:
    stub: pb_grpc.FedServerStub
    state: RoundState
    service: FedServerService
    now: list[float]
    """The round clock (deadlines), moved by the test."""


@contextlib.contextmanager
def serving(run_dir: Path, num_clients: int = 2, pace_down=None, **kw) -> Iterator[Fed]:
    now = [0.0]
    state = RoundState(
        num_clients=num_clients,
        num_rounds=2,
        run_dir=run_dir,
        tracer=Tracer(None, "fed_server"),
        clock=lambda: now[0],
        **kw,
    )
    # A pull that is never released would end DEADLINE_EXCEEDED after 10 min,
    # far past the calls' own timeouts.
    service = FedServerService(
        state,
        HASH,
        num_local_steps=1,
        max_adapter_bytes=4096,
        chunk_bytes=64,
        pull_timeout_s=600,
        pace_down=pace_down,
    )
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: pb_grpc.add_FedServerServicer_to_server(service, s)],
        allow_unauthenticated=True,
    )
    channel = make_channel(f"127.0.0.1:{port}")
    try:
        yield Fed(pb_grpc.FedServerStub(channel), state, service, now)
    finally:
        state.stop()
        channel.close()
        stop_server(server, grace_s=0.5)


def _blob(value: float) -> bytes:
    return serialize_adapter({"w": np.full((4, 4), value, dtype="float32")})


def _push(stub, client_id: int, round_index: int, blob: bytes, attempt: int = 0):
    header = PushHeaderInfo(
        client_id=client_id,
        round=round_index,
        num_samples=10,
        total_bytes=len(blob),
        attempt=attempt,
    )
    return stub.PushAdapter(push_requests(header, blob, 64), timeout=10)


def _join(stub, client_id: int) -> pb.JoinResponse:
    return stub.Join(
        pb.JoinRequest(client_id=client_id, num_samples=10, scenario_hash=HASH), timeout=10
    )


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_a_retried_push_is_answered_replayed_and_counted_once(tmp_path) -> None:
    with serving(tmp_path) as fed:
        _join(fed.stub, 0)
        _join(fed.stub, 1)
        first = _push(fed.stub, 0, 0, _blob(1.0), attempt=2)
        retry = _push(fed.stub, 0, 0, _blob(1.0), attempt=2)
        assert (first.accepted, first.replayed, first.seq) == (True, False, 1)
        assert (retry.accepted, retry.replayed, retry.seq) == (True, True, 1)
        assert fed.state.snapshot().pending == (0,)
        assert _push(fed.stub, 1, 0, _blob(3.0)).seq == 2
        request = pb.PullGlobalRequest(client_id=0, round=0)
        header, blob = read_pull(fed.stub.PullGlobal(request, timeout=10))
        assert header.round == 0
        np.testing.assert_allclose(parse_adapter(blob)["w"], 2.0)  # client 0 counted once
        # Another attempt of a client the round already counts: nothing to redo.
        _push(fed.stub, 0, 1, _blob(1.0), attempt=0)
        err = _refused(lambda: _push(fed.stub, 0, 1, _blob(1.0), attempt=1))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert refusal_of(err) == "duplicate"


def test_a_late_push_for_a_closed_round_is_out_of_range_round_closed(tmp_path) -> None:
    with serving(tmp_path, num_clients=3, deadline_s=10.0, min_clients=2) as fed:
        for k in range(3):
            _join(fed.stub, k)
        _push(fed.stub, 0, 0, _blob(1.0))
        _push(fed.stub, 1, 0, _blob(3.0))
        fed.now[0] = 11.0
        assert fed.state.poll_deadline()  # closed with clients 0 and 1
        before = fed.state.snapshot()
        err = _refused(lambda: _push(fed.stub, 2, 0, _blob(9.0)))
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE
        assert refusal_of(err) == "round_closed"
        assert fed.state.snapshot() == before
        assert fed.state.round_records()[0].missing == {2: "no_update"}


def test_a_push_from_a_client_the_server_does_not_know_is_not_joined(tmp_path) -> None:
    with serving(tmp_path) as fed:
        _join(fed.stub, 0)
        before = fed.state.snapshot()
        err = _refused(lambda: _push(fed.stub, 1, 0, _blob(1.0)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal_of(err) == "not_joined"
        assert fed.state.snapshot() == before
        _join(fed.stub, 1)  # what a client told "not_joined" does
        assert _push(fed.stub, 1, 0, _blob(1.0)).accepted


def test_a_restarted_server_keeps_its_clients_and_their_updates(tmp_path) -> None:
    """The issue's restart: every push after the restart used to be refused as
    "has not joined". Now the store brings the members and round 0's update back."""
    with serving(tmp_path) as fed:
        _join(fed.stub, 0)
        _join(fed.stub, 1)
        _push(fed.stub, 0, 0, _blob(1.0))
    with serving(tmp_path) as fed:
        assert fed.state.snapshot().joined == {0: 10, 1: 10}
        assert _push(fed.stub, 0, 0, _blob(1.0)).replayed  # the retry of a lost reply
        assert _push(fed.stub, 1, 0, _blob(3.0)).seq == 2
        assert _join(fed.stub, 0).current_round == 1  # rejoining is idempotent
        request = pb.PullGlobalRequest(client_id=1, round=0)
        _, blob = read_pull(fed.stub.PullGlobal(request, timeout=10))
        np.testing.assert_allclose(parse_adapter(blob)["w"], 2.0)


def test_a_stopping_server_releases_a_waiting_pull_with_unavailable(tmp_path) -> None:
    with serving(tmp_path) as fed:
        _join(fed.stub, 0)
        call = fed.stub.PullGlobal(pb.PullGlobalRequest(client_id=0, round=0), timeout=120)
        errors: list[grpc.RpcError] = []

        def pull() -> None:
            try:
                list(call)
            except grpc.RpcError as err:
                errors.append(err)

        puller = threading.Thread(target=pull)
        puller.start()
        # The handler holds its stream slot while it waits for round 0.
        while not fed.service.limits.snapshot() and puller.is_alive():
            threading.Event().wait(0.01)
        fed.state.stop()  # what the fed server does once SIGTERM arrives
        puller.join(60)
        assert not puller.is_alive()
        # Released by the stop (a forgotten waiter would see DEADLINE_EXCEEDED at 120 s).
        (err,) = errors
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == STOPPING


def test_a_stopping_server_ends_a_paced_download_with_unavailable(tmp_path) -> None:
    """A global adapter crossing a slow downlink stops at the next message."""
    states: list[RoundState] = []
    paced: list[int] = []

    def pace_down(client_id: int, nbytes: int, new_message: bool) -> None:
        paced.append(nbytes)
        if len(paced) == 2:
            states[0].stop()  # SIGTERM arrives during the transfer

    with serving(tmp_path, num_clients=1, pace_down=pace_down) as fed:
        states.append(fed.state)
        _join(fed.stub, 0)
        _push(fed.stub, 0, 0, _blob(1.0))
        call = fed.stub.PullGlobal(pb.PullGlobalRequest(client_id=0, round=0), timeout=60)
        err = _refused(lambda: list(call))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == STOPPING
        assert len(paced) == 2  # the rest of the adapter is neither paced nor sent
        assert len(list(pull_messages(_blob(1.0)))) > 3


def pull_messages(blob: bytes):
    from fedsllm.wire.adapters import GlobalHeaderInfo, pull_responses

    header = GlobalHeaderInfo(round=0, has_adapter=True, total_bytes=len(blob), finished=False)
    return pull_responses(header, blob, 64)


def test_join_main_server_is_idempotent(tmp_path) -> None:
    """A restarted main server joins again and is answered as the first time."""
    with serving(tmp_path) as fed:
        request = pb.MainServerJoinRequest(scenario_hash=HASH, base_hash="b1")
        first = fed.stub.JoinMainServer(request, timeout=10)
        again = fed.stub.JoinMainServer(request, timeout=10)
        assert first == again
        assert first.num_rounds == 2
        err = _refused(
            lambda: fed.stub.JoinMainServer(
                pb.MainServerJoinRequest(scenario_hash=HASH, base_hash="b2"), timeout=10
            )
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def _until(predicate, limit_s: float = 30.0) -> bool:
    """Wait for `predicate` (a condition, not a timing): False if it never held."""
    stop = threading.Event()
    for _ in range(int(limit_s / 0.01)):
        if predicate():
            return True
        stop.wait(0.01)
    return predicate()


def test_a_cancelled_pull_frees_its_slot_at_once(tmp_path) -> None:
    """A killed client's PullGlobal does not wait for the round to close: its
    slot and thread are freed when the call ends, so the restarted client's
    pull is not refused RESOURCE_EXHAUSTED."""
    with serving(tmp_path) as fed:
        fed.service.limits = PeerLimits(max_streams=1)
        fed.service.pull_poll_s = 3600.0  # only the call's end may wake the wait
        _join(fed.stub, 0)
        request = pb.PullGlobalRequest(client_id=0, round=0)
        for _ in range(3):  # a client restarted three times in one open round
            call = fed.stub.PullGlobal(request, timeout=120)
            assert _until(lambda: fed.service.limits.snapshot())  # the handler waits
            call.cancel()
            assert _until(lambda: not fed.service.limits.snapshot())
        assert fed.state.current_round == 0  # the round never closed meanwhile


def test_a_push_while_the_store_cannot_write_is_unavailable_and_changes_nothing(
    tmp_path,
) -> None:
    backend = FullDisk(tmp_path / STATE_DIR)
    with serving(tmp_path, store=FedServerStore(backend)) as fed:
        _join(fed.stub, 0)
        _join(fed.stub, 1)
        _push(fed.stub, 0, 0, _blob(1.0))
        before, saved = fed.state.snapshot(), fed.state.store.load().ledger
        backend.full = True
        err = _refused(lambda: _push(fed.stub, 1, 0, _blob(3.0), attempt=1))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "could not commit" in err.details() and "No space left" in err.details()
        assert refusal_of(err) is None  # not a refusal of the push: retry it
        assert fed.state.snapshot() == before and fed.state.store.load().ledger == saved
        backend.full = False
        again = _push(fed.stub, 1, 0, _blob(3.0), attempt=1)  # the same key, later
        assert (again.accepted, again.replayed, again.seq) == (True, False, 2)
