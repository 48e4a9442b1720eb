"""RoundState over its store (fed_server/rounds.py): resume after a crash,
idempotent pushes, closing at the deadline with the missing clients recorded."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from fed_server.aggregate import parse_adapter, serialize_adapter
from fed_server.checkpoint import load_checkpoint
from fed_server.rounds import STATE_DIR, RoundState
from fedsllm.model.fedavg import fedavg
from fedsllm.state import (
    DiskBackend,
    FedServerStore,
    LateUpdateError,
    RoundClosedError,
    RoundRecord,
)
from fedsllm.state.store import StorageError
from fedsllm.telemetry.records import TelemetryRecord
from fedsllm.trace import Tracer
from tests.fed_server._stores import FullDisk


def _blob(value: float) -> bytes:
    return serialize_adapter({"w": np.full((2, 2), value, dtype="float32")})


def _state(run_dir, num_clients: int = 3, num_rounds: int = 3, **kw) -> RoundState:
    kw.setdefault("tracer", Tracer(None, "fed_server"))
    return RoundState(num_clients=num_clients, num_rounds=num_rounds, run_dir=run_dir, **kw)


def test_a_restarted_server_resumes_round_members_updates_and_global(tmp_path) -> None:
    first = _state(tmp_path)
    for k in range(3):
        first.join(k, 10 * (k + 1))
    for k in range(3):
        first.submit(k, 0, _blob(float(k)))
    global0 = first.wait_global(0, 0.01)
    first.submit(0, 1, _blob(4.0))
    first.submit(2, 1, _blob(6.0), attempt=3)
    before = first.snapshot()
    del first  # a crash: nothing is closed or flushed by the server

    # The state is on disk under RUN_DIR/state, read through a DiskBackend.
    store = FedServerStore(DiskBackend(tmp_path / STATE_DIR))
    again = _state(tmp_path, store=store)
    assert again.snapshot() == before
    assert (again.current_round, again.snapshot().pending) == (1, (0, 2))
    assert again.snapshot().joined == {0: 10, 1: 20, 2: 30}
    done, blob = again.wait_global_round(0, 0.01)
    assert done == 0
    np.testing.assert_array_equal(parse_adapter(blob)["w"], parse_adapter(global0)["w"])
    # What it accepted before the crash counts once: a retry is a replay...
    retry = again.submit(2, 1, _blob(6.0), attempt=3)
    assert retry.replayed and retry.acceptance.seq == 2
    # ...and the last update closes round 1 with all three, those from before included.
    again.submit(1, 1, _blob(5.0))
    assert again.current_round == 2
    expected = fedavg([parse_adapter(_blob(v)) for v in (4.0, 5.0, 6.0)], [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(parse_adapter(again.wait_global(1, 0.01))["w"], expected["w"])
    assert [r.client_ids for r in again.round_records()] == [[0, 1, 2], [0, 1, 2]]


def test_a_round_is_committed_before_its_waiters_are_released(tmp_path) -> None:
    """A crash between aggregation and the broadcast loses nothing: when the
    hook that runs before waiters wake is called, a fresh server already sees
    the round closed, with its global adapter."""
    seen: list[tuple[int, tuple[int, ...]]] = []

    def crash_here(round_index: int) -> None:
        other = _state(tmp_path, num_clients=1)
        snap = other.snapshot()
        seen.append((snap.completed_round, snap.global_rounds))

    state = _state(tmp_path, num_clients=1, on_aggregated=crash_here)
    state.join(0, 5)
    state.submit(0, 0, _blob(1.0))
    assert seen == [(0, (0,))]


def test_checkpoint_files_catch_up_with_the_store(tmp_path) -> None:
    """A crash after the store's commit and before checkpoint.json: the next
    start writes checkpoint.json and adapters/ from the store."""
    state = _state(tmp_path, num_clients=1)
    state.join(0, 5)
    state.submit(0, 0, _blob(1.0))
    (tmp_path / "checkpoint.json").unlink()
    (tmp_path / "adapters" / "client_global.safetensors").unlink()
    assert load_checkpoint(tmp_path).completed_round == -1
    _state(tmp_path, num_clients=1)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.completed_round == 0
    got = parse_adapter((tmp_path / "adapters" / "client_global.safetensors").read_bytes())
    np.testing.assert_array_equal(got["w"], parse_adapter(_blob(1.0))["w"])


def test_a_retried_push_is_accepted_once(tmp_path) -> None:
    state = _state(tmp_path, num_clients=2)
    state.join(0, 10)
    state.join(1, 10)
    first = state.submit(0, 0, _blob(1.0), attempt=1)
    retry = state.submit(0, 0, _blob(1.0), attempt=1)
    assert not first.replayed and retry.replayed
    assert retry.acceptance == first.acceptance
    assert state.snapshot().pending == (0,)
    state.submit(1, 0, _blob(3.0))
    np.testing.assert_allclose(parse_adapter(state.wait_global(0, 0.01))["w"], 2.0)
    # Even after its round closed, the retry is answered as accepted, not refused.
    assert state.submit(0, 0, _blob(1.0), attempt=1).replayed


def test_the_round_closes_at_the_deadline_and_records_who_was_missing(tmp_path) -> None:
    now = [0.0]
    records: list[TelemetryRecord] = []
    state = _state(
        tmp_path,
        deadline_s=10.0,
        min_clients=1,
        clock=lambda: now[0],
        tracer=Tracer(None, "fed_server", sink=records.append),
    )
    state.join(0, 10)
    state.join(1, 10)  # client 2 never joins
    state.submit(0, 0, _blob(1.0))
    now[0] = 11.0
    with pytest.raises(LateUpdateError):
        state.submit(1, 0, _blob(9.0))  # past due: the round closes without it
    assert state.poll_deadline()
    assert state.current_round == 1
    np.testing.assert_allclose(parse_adapter(state.wait_global(0, 0.01))["w"], 1.0)
    (record,) = state.round_records()
    assert isinstance(record, RoundRecord)
    assert record.reason == "deadline"
    assert record.client_ids == [0]
    assert record.missing == {1: "late", 2: "not_joined"}
    (done,) = [r for r in records if r.name == "round_done"]
    assert done.round == 0
    assert done.labels == {"reason": "deadline", "missing.1": "late", "missing.2": "not_joined"}


def test_no_close_at_the_deadline_below_min_clients(tmp_path) -> None:
    now = [0.0]
    state = _state(tmp_path, deadline_s=10.0, min_clients=2, clock=lambda: now[0])
    for k in range(3):
        state.join(k, 10)
    state.submit(0, 0, _blob(1.0))
    now[0] = 50.0
    assert not state.poll_deadline()
    assert state.current_round == 0
    state.submit(1, 0, _blob(3.0))  # the second report makes it due: it closes at once
    assert state.current_round == 1
    assert state.round_records()[0].missing == {2: "no_update"}


class FailingCloseStore(FedServerStore):
    """A store whose first round commit fails, as a kill -9 or a full disk at that point would."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.fail = True

    def record_round(self, record, global_adapter, ledger) -> None:
        if self.fail:
            self.fail = False
            raise OSError("no space left on device")
        super().record_round(record, global_adapter, ledger)


def test_a_round_whose_close_was_lost_closes_on_the_next_start(tmp_path) -> None:
    """Every update of round 0 was committed, the round's own commit was not:
    nobody would push again (a retry is a replay), so the next start closes it."""
    backend = DiskBackend(tmp_path / STATE_DIR)
    state = _state(tmp_path, num_clients=2, store=FailingCloseStore(backend))
    state.join(0, 10)
    state.join(1, 30)
    state.submit(0, 0, _blob(1.0))
    # The update itself was committed: the pusher is told so; the close was not.
    assert not state.submit(1, 0, _blob(5.0)).replayed
    assert state.current_round == 0  # the round is still open, due
    again = _state(tmp_path, num_clients=2, store=FedServerStore(backend))
    assert again.current_round == 1
    np.testing.assert_allclose(parse_adapter(again.wait_global(0, 0.01))["w"], 4.0)
    assert again.submit(1, 0, _blob(5.0)).replayed


def test_poll_closes_a_complete_round_whose_close_failed(tmp_path) -> None:
    state = _state(tmp_path, num_clients=1, store=FailingCloseStore(DiskBackend(tmp_path / "s")))
    state.join(0, 10)
    assert state.submit(0, 0, _blob(1.0)).acceptance.seq == 1  # accepted; its close failed
    assert state.current_round == 0
    assert state.poll_deadline()  # no deadline configured: it closes because it is complete
    assert state.current_round == 1


def test_a_failing_checkpoint_write_after_the_commit_releases_waiters(
    tmp_path, monkeypatch
) -> None:
    """The round is committed to the store, then checkpoint.json cannot be
    written: the pusher is told its update was accepted, the waiting pull gets
    the new global adapter at once, and the next start rewrites the files."""
    state = _state(tmp_path, num_clients=2)
    state.join(0, 10)
    state.join(1, 30)
    state.submit(0, 0, _blob(1.0))
    waiting = threading.Event()
    got: list[tuple[int, bytes | None]] = []

    def alive() -> bool:
        waiting.set()  # the waiter is in its loop, about to sleep
        return True

    def pull() -> None:
        # Woken only by the round's close: its own poll would take an hour.
        got.append(state.wait_global_round(0, 3600.0, alive=alive, poll_s=3600.0))

    waiter = threading.Thread(target=pull, daemon=True)
    waiter.start()
    assert waiting.wait(30)

    def disk_full(*_args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fed_server.rounds.save_checkpoint", disk_full)
    try:
        result = state.submit(1, 0, _blob(5.0))
        assert not result.replayed and result.acceptance.seq == 2
        assert state.current_round == 1
        waiter.join(30)
        assert not waiter.is_alive()
        assert got and got[0][0] == 0
        np.testing.assert_allclose(parse_adapter(got[0][1])["w"], 4.0)
    finally:
        state.stop()  # never leave the waiter behind, whatever failed
    assert load_checkpoint(tmp_path).completed_round == -1
    monkeypatch.undo()
    _state(tmp_path, num_clients=2)  # the next start repairs the run-directory files
    assert load_checkpoint(tmp_path).completed_round == 0


def test_a_push_while_the_disk_is_full_is_a_storage_error_and_changes_nothing(tmp_path) -> None:
    backend = FullDisk(tmp_path / STATE_DIR)
    state = _state(tmp_path, num_clients=2, store=FedServerStore(backend))
    state.join(0, 10)
    state.join(1, 10)
    state.submit(0, 0, _blob(1.0))
    before, saved = state.snapshot(), state.store.load().ledger
    backend.full = True
    with pytest.raises(StorageError, match="could not commit update .*No space left"):
        state.submit(1, 0, _blob(3.0), attempt=2)
    with pytest.raises(StorageError):  # still full: still refused, as transient
        state.submit(1, 0, _blob(3.0), attempt=2)
    assert state.snapshot() == before and state.store.load().ledger == saved
    assert not state.poll_deadline()  # nothing due; a full disk is not a crash either
    backend.full = False
    # The client retries the same key later: a first acceptance, not a replay.
    retry = state.submit(1, 0, _blob(3.0), attempt=2)
    assert not retry.replayed and retry.acceptance.seq == 2
    assert state.current_round == 1


def test_poll_survives_a_full_disk_while_closing(tmp_path) -> None:
    """A close that cannot be committed is retried by the next poll, not raised at it."""
    now = [0.0]
    backend = FullDisk(tmp_path / STATE_DIR)
    state = _state(
        tmp_path, deadline_s=5.0, min_clients=1, clock=lambda: now[0], store=FedServerStore(backend)
    )
    state.join(0, 10)
    state.submit(0, 0, _blob(1.0))
    now[0] = 6.0
    backend.full = True
    assert not state.poll_deadline()
    assert state.current_round == 0
    backend.full = False
    assert state.poll_deadline() and state.current_round == 1


def test_a_ledger_of_a_long_run_stays_small_and_replays_the_last_round(tmp_path) -> None:
    """200 rounds: ledger.json holds the open round, not the run's history,
    and a push retried after a restart is still answered replayed."""
    state = _state(tmp_path, num_clients=2, num_rounds=200)
    state.join(0, 10)
    state.join(1, 10)
    ledger = tmp_path / STATE_DIR / "ledger.json"
    sizes = []
    for r in range(200):
        state.submit(0, r, _blob(float(r)), attempt=r % 3)
        state.submit(1, r, _blob(float(r)))
        sizes.append(ledger.stat().st_size)
    assert state.finished
    assert max(sizes) <= sizes[10] + 16  # a digit more in the round numbers, nothing else
    again = _state(tmp_path, num_clients=2, num_rounds=200)
    assert again.submit(0, 199, _blob(199.0), attempt=199 % 3).replayed
    assert again.submit(1, 198, _blob(198.0)).replayed
    with pytest.raises(RoundClosedError):  # long closed: catch up
        again.submit(1, 10, _blob(10.0))


def test_whatever_fails_after_the_commit_the_waiters_are_released(tmp_path) -> None:
    """A failure after the store's commit other than the files (here the trace's
    sink) still wakes the waiting pulls, and the pusher is told it was accepted."""

    def sink(record: TelemetryRecord) -> None:
        if record.name == "round_done":
            raise RuntimeError("telemetry spool broken")

    state = _state(tmp_path, num_clients=1, tracer=Tracer(None, "fed_server", sink=sink))
    state.join(0, 10)
    waiting = threading.Event()
    got: list[tuple[int, bytes | None]] = []

    def alive() -> bool:
        waiting.set()
        return True

    waiter = threading.Thread(
        target=lambda: got.append(state.wait_global_round(0, 3600.0, alive=alive, poll_s=3600.0)),
        daemon=True,
    )
    waiter.start()
    assert waiting.wait(30)
    try:
        assert not state.submit(0, 0, _blob(2.0)).replayed
        waiter.join(30)
        assert not waiter.is_alive() and got[0][0] == 0
    finally:
        state.stop()
    assert state.current_round == 1 and load_checkpoint(tmp_path).completed_round == 0
