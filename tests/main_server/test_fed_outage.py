"""A fed server that is briefly gone does not stop the main server: Join is
retried with backoff while it is UNAVAILABLE (and gives up only when the main
server itself stops), adapter pushes are retried from later ticks without
blocking the tick loop, a push refused as "not joined" joins again first, and
the keepalive options of the channels agree with the servers' (an idle Train
stream is never cut)."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

import main_server.__main__ as main_mod
from fedsllm.proto import fed_server_pb2
from fedsllm.roles import RoleStopping
from main_server.__main__ import AdapterCheckpoints, join_main_server


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call as gRPC raises it: an RpcError that is also the Call (the
    retry policy reads the code only from a Call)."""

    def __init__(self, code: grpc.StatusCode, refusal: str | None = None) -> None:
        self._code = code
        self._refusal = refusal

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name}"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("fedsllm-refusal", self._refusal),) if self._refusal else ()

    def initial_metadata(self) -> tuple:  # pragma: no cover - unused
        return ()

    def is_active(self) -> bool:  # pragma: no cover - unused
        return False

    def time_remaining(self) -> None:  # pragma: no cover - unused
        return None

    def cancel(self) -> bool:  # pragma: no cover - unused
        return False

    def add_callback(self, callback: Any) -> bool:  # pragma: no cover - unused
        return False


class FakeFedServer:
    """The FedServer stub's three calls, answering from scripted outcomes."""

    def __init__(self) -> None:
        self.join_outcomes: list[Any] = []
        self.push_outcomes: list[Any] = []
        self.status = fed_server_pb2.StatusResponse(round=0, num_rounds=3)
        self.pushes: list[tuple[int, bool]] = []
        self.joins = 0

    def JoinMainServer(self, request: Any, timeout: float) -> Any:  # noqa: N802 - gRPC name
        self.joins += 1
        outcome = self.join_outcomes.pop(0) if self.join_outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        return fed_server_pb2.MainServerJoinResponse(num_rounds=3)

    def PushServerAdapter(self, requests: Any, timeout: float) -> Any:  # noqa: N802
        outcome = self.push_outcomes.pop(0) if self.push_outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        first = next(iter(requests))
        self.pushes.append((first.header.round, first.header.final))
        return fed_server_pb2.PushAdapterResponse(accepted=True)

    def Status(self, request: Any, timeout: float) -> Any:  # noqa: N802
        if isinstance(self.status, Exception):
            raise self.status
        return self.status


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE)


@pytest.fixture()
def fed(monkeypatch: pytest.MonkeyPatch) -> FakeFedServer:
    from fedsllm.proto import fed_server_pb2_grpc

    fake = FakeFedServer()
    monkeypatch.setattr(fed_server_pb2_grpc, "FedServerStub", lambda channel: fake)
    monkeypatch.setattr(main_mod, "RETRY_BASE_S", 0.001)
    monkeypatch.setattr(main_mod, "RETRY_CAP_S", 0.002)
    return fake


def test_join_retries_while_the_fed_server_is_unavailable(fed: FakeFedServer) -> None:
    fed.join_outcomes = [UNAVAILABLE, UNAVAILABLE]
    assert join_main_server(None, "s", "b") == 3
    assert fed.joins == 3


def test_join_gives_up_only_when_the_main_server_stops(fed: FakeFedServer) -> None:
    fed.join_outcomes = [UNAVAILABLE] * 5
    stop = threading.Event()
    stop.set()
    with pytest.raises(RoleStopping):
        join_main_server(None, "s", "b", stop)
    assert fed.joins == 1


def test_join_refusal_is_not_retried(fed: FakeFedServer) -> None:
    from fedsllm.bootstrap import SettingError

    fed.join_outcomes = [FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION)]
    with pytest.raises(SettingError):
        join_main_server(None, "s", "b")
    assert fed.joins == 1


def _checkpoints(fed: FakeFedServer, now: list[float], **kwargs: Any) -> AdapterCheckpoints:
    return AdapterCheckpoints(
        None, lambda timeout_s=None: b"adapter", 1024, every_s=1.0, clock=lambda: now[0], **kwargs
    )


def test_a_push_the_fed_server_cannot_take_is_retried_from_later_ticks(
    fed: FakeFedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main_mod, "RETRY_BASE_S", 5.0)
    monkeypatch.setattr(main_mod, "RETRY_CAP_S", 5.0)
    now = [0.0]
    rounds: list[int] = []
    ckpt = _checkpoints(fed, now, on_round=lambda: rounds.append(1))
    fed.status = fed_server_pb2.StatusResponse(round=1, num_rounds=3)  # round 0 completed
    fed.push_outcomes = [UNAVAILABLE, UNAVAILABLE]
    ckpt.tick()
    assert ckpt.completed == 0 and ckpt.pushed == -1 and rounds == [1]
    fed.status = UNAVAILABLE  # the fed server is down: the tick returns at once
    now[0] = 1.0
    ckpt.tick()
    assert fed.pushes == [] and ckpt.pushed == -1  # the backoff (2.5-5 s) has not passed
    now[0] = 6.0
    ckpt.tick()  # second try: still unavailable
    assert ckpt.pushed == -1
    now[0] = 12.0
    ckpt.tick()
    assert fed.pushes == [(0, False)] and ckpt.pushed == 0
    now[0] = 20.0
    ckpt.tick()
    assert fed.pushes == [(0, False)]  # nothing left to send
    assert rounds == [1]


def test_a_push_refused_as_not_joined_joins_again_first(fed: FakeFedServer) -> None:
    now = [0.0]
    joined: list[int] = []
    ckpt = _checkpoints(fed, now, rejoin=lambda: joined.append(1))
    fed.status = fed_server_pb2.StatusResponse(round=2, num_rounds=3)
    fed.push_outcomes = [FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "not_joined")]
    ckpt.tick()
    assert joined == [1] and fed.pushes == [(1, False)] and ckpt.pushed == 1


def test_keepalive_options_agree_between_channels_and_servers() -> None:
    """An idle Train stream (a client waiting minutes for a round) is never cut
    with too_many_pings: the channel's keepalive is one the server accepts."""
    from fedsllm.wire.retry import keepalive_problems
    from fedsllm.wire.rpc import CHANNEL_OPTIONS, SERVER_OPTIONS

    assert keepalive_problems(CHANNEL_OPTIONS, SERVER_OPTIONS) == []
