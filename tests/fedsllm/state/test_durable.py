"""The fed server's rounds across crashes: nothing lost, nothing doubled, audit bit-exact."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fed_server.aggregate import parse_adapter, serialize_adapter
from fedsllm.model.fedavg import fedavg
from fedsllm.state.audit import audit_store
from fedsllm.state.durable import DurableRounds
from fedsllm.state.errors import NotJoinedError, RoundClosedError
from fedsllm.state.format import tensor_digest
from fedsllm.state.store import DiskBackend, FedServerStore, InMemoryBackend
from tests.fedsllm.state._blobs import adapter

K, R = 3, 4


def aggregate(blobs: Sequence[bytes], weights: Sequence[float]) -> bytes:
    return serialize_adapter(fedavg([parse_adapter(b) for b in blobs], weights))


def _open(store: FedServerStore, now: float = 0.0) -> DurableRounds:
    return DurableRounds.open(
        store, num_clients=K, num_rounds=R, min_clients=2, deadline_s=5.0, now=now,
        aggregate=aggregate,
    )  # fmt: skip


def _update(c: int, r: int) -> bytes:
    return adapter(100 * r + c)


def _play_round(rounds: DurableRounds, r: int, now: float, clients=range(K)) -> None:
    for c in clients:
        rounds.submit(c, r, 0, _update(c, r), now)


def test_restart_between_rounds_resumes_everything(tmp_path) -> None:
    rounds = _open(FedServerStore(DiskBackend(tmp_path)))
    assert not rounds.resumed
    for c in range(K):
        rounds.join(c, 5 + c, 0.0)
    _play_round(rounds, 0, 1.0)
    assert rounds.close_if_due(1.0).round == 0
    rounds.submit(0, 1, 0, _update(0, 1), 2.0)
    # the process dies; a new one opens the same directory
    again = _open(FedServerStore(DiskBackend(tmp_path)), now=1000.0)
    assert again.resumed and again.ledger.open_round == 1
    assert again.ledger.members == {0: 5, 1: 6, 2: 7}
    assert again.latest_global()[0] == 0
    assert tensor_digest(again.latest_global()[1]) == tensor_digest(rounds.latest_global()[1])
    # client 0's retried push is the same acceptance; the others are new
    assert again.submit(0, 1, 0, _update(0, 1), 1001.0).replayed
    _play_round(again, 1, 1001.0, clients=(1, 2))
    assert again.close_if_due(1001.0).client_ids == [0, 1, 2]
    for r in range(2, R):
        _play_round(again, r, 1002.0 + r)
        again.close_if_due(1002.0 + r)
    assert again.ledger.finished
    result = audit_store(again.store)
    assert result.ok and result.num_updates == K * R and result.max_abs_diff == 0.0


@pytest.mark.parametrize("crash_at_write", [1, 2, 3])
def test_crash_while_closing_recloses_the_same_round(crash_at_write: int) -> None:
    class Crashy(InMemoryBackend):
        armed = False
        num = 0

        def write(self, name: str, data: bytes) -> None:
            if self.armed:
                self.num += 1
                if self.num == crash_at_write:
                    raise OSError("killed")
            super().write(name, data)

    backend = Crashy()
    rounds = _open(FedServerStore(backend))
    for c in range(K):
        rounds.join(c, 1 + c, 0.0)
    _play_round(rounds, 0, 1.0)
    backend.armed = True
    with pytest.raises(OSError):
        rounds.close_if_due(1.0)
    backend.armed = False
    assert rounds.ledger.open_round == 0  # nothing moved in memory either
    restarted = _open(FedServerStore(backend), now=50.0)
    assert restarted.ledger.open_round == 0 and len(restarted.ledger.accepted()) == K
    record = restarted.close_if_due(50.0)
    assert record is not None and record.client_ids == [0, 1, 2]
    expected = aggregate([_update(c, 0) for c in range(K)], [1.0, 2.0, 3.0])
    assert tensor_digest(restarted.latest_global()[1]) == tensor_digest(expected)
    assert audit_store(restarted.store).ok


def test_deadline_round_and_straggler_then_lost_membership() -> None:
    rounds = _open(FedServerStore(InMemoryBackend()))
    for c in range(K):
        rounds.join(c, 2, 0.0)
    _play_round(rounds, 0, 1.0, clients=(0, 1))
    assert rounds.close_if_due(4.0) is None  # before the deadline: wait for client 2
    record = rounds.close_if_due(6.0)
    assert record.reason == "deadline" and record.missing == {2: "no_update"}
    with pytest.raises(RoundClosedError):
        rounds.submit(2, 0, 0, _update(2, 0), 6.5)
    # a fed server restarted on an empty store knows nobody: "not joined", not "late"
    fresh = _open(FedServerStore(InMemoryBackend()))
    with pytest.raises(NotJoinedError):
        fresh.submit(2, 1, 0, _update(2, 1), 7.0)
    assert audit_store(rounds.store).ok


def test_a_push_retried_across_a_restart_after_its_round_closed_is_replayed(tmp_path) -> None:
    """The reply to the push that closed round r was lost, then the fed server
    restarted: the client's retry is answered "replayed" from round r's record
    (ledger.json no longer lists closed rounds)."""
    rounds = _open(FedServerStore(DiskBackend(tmp_path)))
    for c in range(K):
        rounds.join(c, 1 + c, 0.0)
    for r in range(3):
        _play_round(rounds, r, 1.0 + r)
        rounds.close_if_due(1.0 + r)
    saved = rounds.store.load().ledger
    assert saved["closed_round"] == 2 and saved["accepted"] == []
    again = _open(FedServerStore(DiskBackend(tmp_path)), now=100.0)
    for r in (1, 2):
        result = again.submit(K - 1, r, 0, _update(K - 1, r), 101.0)
        assert result.replayed and result.acceptance.seq == K
    assert again.store.load().ledger == saved  # a replay writes nothing
