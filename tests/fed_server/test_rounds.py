"""The round state machine (fed_server/rounds.py) without gRPC."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fed_server.aggregate import parse_adapter, serialize_adapter
from fed_server.checkpoint import load_checkpoint
from fed_server.rounds import RoundState
from fedsllm.errors import StateError, WireError
from fedsllm.state import (
    ConflictingUpdateError,
    DuplicateUpdateError,
    NotJoinedError,
    RoundClosedError,
    RoundNotOpenError,
    RunFinishedError,
)
from fedsllm.trace import Tracer


def _blob(value: float) -> bytes:
    return serialize_adapter({"w": np.full((2, 2), value, dtype="float32")})


def _state(tmp_path, num_clients: int = 2, num_rounds: int = 3, **kw) -> RoundState:
    state = RoundState(
        num_clients=num_clients,
        num_rounds=num_rounds,
        run_dir=tmp_path,
        tracer=Tracer(None, "fed_server"),
        **kw,
    )
    return state


def test_round_completes_when_all_report(tmp_path) -> None:
    state = _state(tmp_path)
    state.join(0, 10)
    state.join(1, 30)
    state.submit(0, 0, _blob(1.0))
    assert state.current_round == 0
    state.submit(1, 0, _blob(5.0))
    assert state.current_round == 1
    merged = parse_adapter(state.wait_global(0, timeout_s=1))
    np.testing.assert_allclose(merged["w"], 4.0)  # (1*10 + 5*30) / 40
    assert load_checkpoint(tmp_path).completed_round == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: s.submit(5, 0, _blob(1.0)), WireError, "client_id"),
        (lambda s: s.submit(1, 0, _blob(1.0)), NotJoinedError, "has not joined"),
        (lambda s: s.submit(0, 1, _blob(1.0)), RoundNotOpenError, "not open yet"),
        (lambda s: s.submit(0, 0, b"garbage"), WireError, "safetensors"),
        (lambda s: s.submit(0, 0, _blob(1.0), num_samples=11), WireError, "num_samples"),
        (
            lambda s: s.submit(0, 0, serialize_adapter({"w": np.full((2, 2), np.inf, "float32")})),
            WireError,
            "NaN or Inf",
        ),
        (lambda s: s.join(0, 99), StateError, "rejoined"),
        (lambda s: s.join(0, 0), WireError, "num_samples"),
        (lambda s: s.wait_global(7, 0.01), WireError, "round"),
    ],
)
def test_bad_requests_leave_state_unchanged(tmp_path, call, error, match) -> None:
    state = _state(tmp_path)
    state.join(0, 10)
    before = state.snapshot()
    with pytest.raises(error, match=match):
        call(state)
    assert state.snapshot() == before
    assert not (tmp_path / "checkpoint.json").exists()


def test_duplicate_and_incompatible_reports(tmp_path) -> None:
    state = _state(tmp_path, num_clients=3)
    for k in range(3):
        state.join(k, 10)
    state.submit(0, 0, _blob(1.0))
    before = state.snapshot()
    with pytest.raises(ConflictingUpdateError, match="other tensors"):
        state.submit(0, 0, _blob(2.0))  # the same key (attempt 0) with other bytes
    with pytest.raises(DuplicateUpdateError, match="already accepted"):
        state.submit(0, 0, _blob(2.0), attempt=1)  # a second update of the round
    wrong_shape = serialize_adapter({"w": np.zeros((3, 2), "float32")})
    with pytest.raises(WireError, match="shape"):
        state.submit(1, 0, wrong_shape)
    assert state.snapshot() == before


def test_wait_global_blocks_until_aggregated(tmp_path) -> None:
    state = _state(tmp_path, num_clients=1)
    state.join(0, 4)
    assert state.wait_global(-1, timeout_s=0.01) is None
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(state.wait_global(0, timeout_s=5)))
    waiter.start()
    state.submit(0, 0, _blob(3.0))
    waiter.join(5)
    assert got and parse_adapter(got[0])["w"][0, 0] == 3.0
    with pytest.raises(TimeoutError):
        state.wait_global(1, timeout_s=0.01)


def test_deadline_aggregates_with_enough_clients(tmp_path) -> None:
    now = [0.0]
    state = _state(tmp_path, num_clients=3, deadline_s=10.0, min_clients=2, clock=lambda: now[0])
    for k in range(3):
        state.join(k, 10)
    state.submit(0, 0, _blob(1.0))
    now[0] = 11.0
    assert not state.poll_deadline()  # one adapter is fewer than min_clients
    state.submit(2, 0, _blob(3.0))  # the round is past due with min_clients: it closes now
    assert state.current_round == 1
    assert not state.poll_deadline()
    np.testing.assert_allclose(parse_adapter(state.wait_global(0, 1))["w"], 2.0)
    with pytest.raises(RoundClosedError, match="round closed"):
        state.submit(1, 0, _blob(9.0))  # the straggler is refused


def test_resume_from_the_store(tmp_path) -> None:
    state = _state(tmp_path, num_clients=1)
    state.join(0, 4)
    state.submit(0, 0, _blob(2.0))
    resumed = _state(tmp_path, num_clients=1)
    assert resumed.current_round == 1
    assert parse_adapter(resumed.wait_global(0, 0.01))["w"][0, 0] == 2.0
    resumed.join(0, 4)
    with pytest.raises(WireError, match="shape"):
        resumed.submit(0, 1, serialize_adapter({"w": np.zeros((1, 2), "float32")}))


def test_no_adapter_is_accepted_after_the_last_round(tmp_path) -> None:
    state = _state(tmp_path, num_clients=1, num_rounds=1)
    state.join(0, 4)
    state.submit(0, 0, _blob(1.0))
    assert state.finished and state.current_round == 1
    before = state.snapshot()
    with pytest.raises(RunFinishedError, match="rounds are done"):
        state.submit(0, 1, _blob(2.0))
    assert state.snapshot() == before
    assert load_checkpoint(tmp_path).completed_round == 0


def test_first_deadline_runs_from_the_first_join(tmp_path) -> None:
    """Server start-up and the clients' model building are no part of round 0."""
    now = [0.0]
    state = _state(tmp_path, num_clients=2, deadline_s=1.0, min_clients=1, clock=lambda: now[0])
    now[0] = 30.0  # the clients took 30 s to build their models
    state.join(0, 10)
    state.join(1, 10)
    state.submit(0, 0, _blob(1.0))
    now[0] = 30.2
    assert not state.poll_deadline()  # 0.2 s into the round: client 1 still has time
    now[0] = 31.5
    assert state.poll_deadline()
    assert state.current_round == 1
