from __future__ import annotations

import pytest

from fedsllm.errors import StateError, WireError
from fedsllm.state.errors import (
    ConflictingUpdateError,
    DuplicateUpdateError,
    LateUpdateError,
    MembershipError,
    NotJoinedError,
    RoundClosedError,
    RoundNotOpenError,
    RunFinishedError,
    UpdateRefused,
)
from fedsllm.state.ledger import RoundLedger, RoundRecord


def _ledger(num_clients: int = 3, deadline_s: float = 10.0, min_clients: int = 2, **kw):
    ledger = RoundLedger(
        num_clients=num_clients,
        num_rounds=kw.pop("num_rounds", 3),
        min_clients=min_clients,
        deadline_s=deadline_s,
    )
    for c in range(kw.pop("num_joined", num_clients)):
        ledger.join(c, 10 * (c + 1), now=0.0)
    return ledger


def test_push_is_accepted_once_and_a_retry_gets_the_same_acceptance() -> None:
    ledger = _ledger()
    first = ledger.submit(0, 0, attempt=0, digest="d0", now=1.0)
    assert not first.replayed and first.acceptance.seq == 1
    assert first.acceptance.num_samples == 10
    again = ledger.submit(0, 0, attempt=0, digest="d0", now=2.0)
    assert again.replayed and again.acceptance == first.acceptance
    assert len(ledger.accepted()) == 1


def test_a_retry_after_the_round_closed_still_gets_its_acceptance() -> None:
    ledger = _ledger()
    acc = [ledger.submit(c, 0, 0, f"d{c}", now=1.0).acceptance for c in range(3)]
    ledger.close(now=2.0)
    assert ledger.submit(2, 0, 0, "d2", now=3.0).acceptance == acc[2]


@pytest.mark.parametrize(
    ("attempt", "digest", "error"),
    [(0, "other", ConflictingUpdateError), (1, "d0", DuplicateUpdateError)],
)
def test_same_key_other_tensors_or_another_attempt_is_refused(attempt, digest, error) -> None:
    ledger = _ledger()
    ledger.submit(0, 0, 0, "d0", now=1.0)
    with pytest.raises(error) as info:
        ledger.submit(0, 0, attempt, digest, now=1.0)
    assert len(ledger.accepted()) == 1
    if error is DuplicateUpdateError:
        assert info.value.accepted_attempt == 0


def test_refusals_are_distinct_state_errors() -> None:
    ledger = _ledger(num_joined=2, deadline_s=10.0, min_clients=1)
    reasons = set()

    def refused(exc, *args, now=0.5):
        with pytest.raises(exc) as info:
            ledger.submit(*args, now=now)
        assert isinstance(info.value, UpdateRefused) and isinstance(info.value, StateError)
        reasons.add(info.value.reason)
        return info.value

    err = refused(NotJoinedError, 2, 0, 0, "x")
    assert "has not joined" in str(err)
    refused(RoundNotOpenError, 0, 1, 0, "x")
    ledger.submit(0, 0, 0, "a", now=1.0)
    refused(LateUpdateError, 1, 0, 0, "x", now=11.0)
    ledger.close(now=11.0)
    refused(RoundClosedError, 1, 0, 0, "x", now=12.0)
    for r in (1, 2):
        ledger.submit(0, r, 0, "a", now=30.0 * r)
        ledger.close(now=30.0 * r + 11)
    assert ledger.finished
    refused(RunFinishedError, 1, 3, 0, "x", now=100.0)
    assert reasons == {"not_joined", "not_open", "late", "round_closed", "finished"}


@pytest.mark.parametrize(
    ("client_id", "round_index", "attempt"), [(-1, 0, 0), (3, 0, 0), (0, -1, 0), (0, 0, -1)]
)
def test_out_of_range_push_is_a_wire_error(client_id, round_index, attempt) -> None:
    with pytest.raises(WireError):
        _ledger().submit(client_id, round_index, attempt, "d", now=0.0)


def test_late_push_is_accepted_while_below_min_clients() -> None:
    ledger = _ledger(min_clients=2)
    ledger.submit(0, 0, 0, "a", now=11.0)  # past the deadline, but only 1 < 2 reported
    assert ledger.due(11.0) is None
    ledger.submit(1, 0, 0, "b", now=12.0)
    assert ledger.due(12.0) == "deadline"
    with pytest.raises(LateUpdateError):
        ledger.submit(2, 0, 0, "c", now=12.5)


def test_round_closes_when_complete_and_the_record_lists_everyone() -> None:
    ledger = _ledger()
    for c in (2, 0, 1):
        assert ledger.due(1.0) is None
        ledger.submit(c, 0, 0, f"d{c}", now=1.0)
    assert ledger.due(1.0) == "complete"
    rec = ledger.close(now=1.5)
    assert rec.reason == "complete" and rec.client_ids == [0, 1, 2]
    assert rec.weights == [10.0, 20.0, 30.0]
    assert [a.seq for a in rec.accepted] == [2, 3, 1]
    assert rec.missing == {}
    assert ledger.open_round == 1 and ledger.accepted() == []


def test_deadline_close_records_who_was_missing_and_why() -> None:
    ledger = _ledger(num_clients=4, num_joined=3, min_clients=1)
    ledger.submit(0, 0, 0, "a", now=2.0)
    with pytest.raises(LateUpdateError):
        ledger.submit(1, 0, 0, "b", now=10.5)
    rec = ledger.close(now=11.0)
    assert rec.reason == "deadline" and rec.client_ids == [0]
    assert rec.missing == {1: "late", 2: "no_update", 3: "not_joined"}
    assert RoundRecord.from_dict(rec.to_dict()) == rec
    # the next round's clock starts at the close
    assert not ledger.past_deadline(20.0) and ledger.past_deadline(21.5)


def test_close_refuses_a_round_that_is_not_due() -> None:
    ledger = _ledger()
    ledger.submit(0, 0, 0, "a", now=1.0)
    with pytest.raises(StateError, match="not due"):
        ledger.close(now=5.0)


def test_no_deadline_means_every_client() -> None:
    ledger = _ledger(deadline_s=0.0)
    ledger.submit(0, 0, 0, "a", now=1.0)
    ledger.submit(1, 0, 0, "b", now=1.0)
    assert ledger.due(1e9) is None


def test_deadline_starts_at_the_first_join() -> None:
    ledger = RoundLedger(num_clients=2, num_rounds=2, min_clients=1, deadline_s=5.0)
    ledger.join(0, 1, now=100.0)
    ledger.join(1, 1, now=103.0)
    ledger.submit(0, 0, 0, "a", now=104.0)
    assert ledger.due(105.0) is None and ledger.due(105.5) == "deadline"


def test_join_is_idempotent_and_checked() -> None:
    ledger = _ledger()
    info = ledger.join(0, 10, now=5.0)
    assert (info.current_round, info.num_rounds) == (0, 3)
    with pytest.raises(MembershipError, match="num_samples=11"):
        ledger.join(0, 11, now=5.0)
    with pytest.raises(WireError):
        ledger.join(0, 0, now=5.0)


def test_a_failed_commit_leaves_the_ledger_unchanged() -> None:
    ledger = _ledger()
    before = ledger.to_dict()

    def boom(*_args) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        ledger.submit(0, 0, 0, "a", now=1.0, commit=boom)
    assert ledger.to_dict() == before
    for c in range(3):
        ledger.submit(c, 0, 0, "a", now=1.0)
    before = ledger.to_dict()
    with pytest.raises(OSError):
        ledger.close(now=2.0, commit=boom)
    assert ledger.to_dict() == before and ledger.open_round == 0


def test_commit_sees_the_next_state() -> None:
    ledger = _ledger()
    seen: list[dict] = []
    ledger.submit(0, 0, 0, "a", now=1.0, commit=seen.append)
    assert seen[-1]["accepted"][0]["client_id"] == 0
    ledger.submit(1, 0, 0, "b", now=1.0)
    ledger.submit(2, 0, 0, "c", now=1.0)
    records = []
    ledger.close(now=2.0, commit=lambda rec, state: records.append((rec.round, state)))
    assert records[0][0] == 0 and records[0][1]["closed_round"] == 0


def test_restore_resumes_membership_round_and_accepted_updates() -> None:
    ledger = _ledger()
    for c in range(3):
        ledger.submit(c, 0, 0, f"d{c}", now=1.0)
    ledger.close(now=2.0)
    ledger.submit(1, 1, 4, "e1", now=3.0)
    state = ledger.to_dict()
    back = RoundLedger.restore(
        state, num_clients=3, num_rounds=3, min_clients=2, deadline_s=10.0, now=500.0
    )
    assert back.to_dict() == state
    assert back.open_round == 1 and back.members == {0: 10, 1: 20, 2: 30}
    # the update accepted before the restart is not taken twice, and a retry replays
    assert back.submit(1, 1, 4, "e1", now=501.0).replayed
    with pytest.raises(DuplicateUpdateError):
        back.submit(1, 1, 5, "e2", now=501.0)
    # the deadline restarted at `now`
    assert not back.past_deadline(509.0) and back.past_deadline(511.0)


def test_restore_refuses_another_run() -> None:
    state = _ledger().to_dict()
    with pytest.raises(StateError, match="num_clients=3, this run has 4"):
        RoundLedger.restore(state, num_clients=4, num_rounds=3, now=0.0)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="min_clients"):
        RoundLedger(num_clients=2, num_rounds=1, min_clients=3)


def test_each_refusal_has_its_own_reason_word() -> None:
    from fedsllm.state.errors import UPDATE_REFUSALS

    assert len(UPDATE_REFUSALS) == 7
    for reason, cls in UPDATE_REFUSALS.items():
        assert cls.reason == reason and issubclass(cls, UpdateRefused)


def _play(ledger: RoundLedger, rounds: range, now: float = 1.0) -> list[RoundRecord]:
    records = []
    for r in rounds:
        for c in range(ledger.num_clients):
            ledger.submit(c, r, attempt=c, digest=f"d{c}.{r}", now=now)
        records.append(ledger.close(now=now))
    return records


def test_the_state_a_push_commits_does_not_grow_with_the_run() -> None:
    ledger = _ledger(num_rounds=200)
    sizes: list[int] = []
    for r in range(200):
        ledger.submit(0, r, 0, f"a{r}", now=1.0, commit=lambda s: sizes.append(len(repr(s))))
        for c in (1, 2):
            ledger.submit(c, r, 0, f"b{r}", now=1.0)
        ledger.close(now=1.0)
    assert max(sizes) <= sizes[10] + 8  # one digit more in the round numbers, nothing else
    # what it holds is the open round's: closed rounds' acceptances are in their records
    assert ledger.finished and ledger.to_dict()["accepted"] == []


def test_retries_of_the_last_closed_rounds_replay_older_ones_are_closed() -> None:
    ledger = RoundLedger(num_clients=2, num_rounds=10, replay_rounds=2)
    for c in range(2):
        ledger.join(c, 5, now=0.0)
    records = _play(ledger, range(5))
    for r in (3, 4):
        again = ledger.submit(1, r, 1, f"d1.{r}", now=2.0)
        assert again.replayed and again.acceptance == records[r].accepted[1]
        with pytest.raises(DuplicateUpdateError):
            ledger.submit(1, r, 7, f"d1.{r}", now=2.0)
    with pytest.raises(RoundClosedError):  # beyond the window: catch up
        ledger.submit(1, 2, 1, "d1.2", now=2.0)
    assert ledger.accepted(2) == [] and ledger.accepted(4) == list(records[4].accepted)


def test_restore_rebuilds_the_replay_index_from_the_round_records() -> None:
    ledger = RoundLedger(num_clients=2, num_rounds=10, replay_rounds=2)
    for c in range(2):
        ledger.join(c, 5, now=0.0)
    records = _play(ledger, range(4))
    state = ledger.to_dict()
    # A crash inside round 4's close left its record but not the ledger: it stays open.
    half = RoundRecord(4, "complete", 1.0, 1.0, records[3].accepted, {})
    back = RoundLedger.restore(
        state, num_clients=2, num_rounds=10, replay_rounds=2, now=0.0, records=[*records, half]
    )
    assert back.open_round == 4 and back.accepted() == []
    assert back.submit(0, 3, 0, "d0.3", now=1.0).replayed
    assert back.submit(1, 2, 1, "d1.2", now=1.0).replayed
    with pytest.raises(RoundClosedError):
        back.submit(1, 1, 1, "d1.1", now=1.0)
    assert not back.submit(0, 4, 0, "new", now=1.0).replayed


def test_restore_reads_a_state_that_listed_every_round() -> None:
    """ledger.json of the same format version written before the ledger kept
    only the open round: "accepted" held every round's. It reads the same."""
    ledger = _ledger()
    records = _play(ledger, range(2))
    ledger.submit(1, 2, 4, "e1", now=3.0)
    state = ledger.to_dict()
    every_round = [a for r in records for a in r.to_dict()["accepted"]] + state["accepted"]
    old = dict(state, accepted=every_round)
    back = RoundLedger.restore(old, num_clients=3, num_rounds=3, min_clients=2, now=0.0)
    assert back.to_dict() == state
    assert back.submit(1, 2, 4, "e1", now=1.0).replayed
