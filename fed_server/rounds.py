"""The fed server's round state machine: who joined, who reported, when to aggregate.

Round r collects one client adapter per client; when all K have reported (or
the deadline passed with at least `min_clients`), FedAvg gives the global
adapter of round r, which is released to `wait_global_round`.

The rules (membership, idempotent pushes keyed by (client, round, attempt),
closing) are fedsllm.state's `RoundLedger`, bound to a `FedServerStore` by
`DurableRounds`: every join, accepted update and closed round is committed to
the store before the caller is answered, and a closed round is committed
before the clients waiting for it are released. The store lives in
RUN_DIR/state (a DiskBackend) when the server has a run directory, in memory
otherwise; a RoundState opened on a store that holds rounds resumes from it:
membership, the open round, the updates accepted in it, the latest global
adapter.

This module adds what the ledger leaves to the role: the adapter checks
(parsed, finite, the model's keys, shapes and dtypes) before anything is
accepted, FedAvg, the files other code reads (RUN_DIR/adapters/client_global*
and checkpoint.json, fed_server/checkpoint.py), the trace, and waiters that
a stopping server, or their caller's going away, wakes at once. Once the store
committed a round, its waiters are released and its pusher told "accepted"
whatever fails after (those files are rewritten from the store at the next
start); a store that cannot commit raises StorageError, and nothing changed.
Refusals are the typed errors of fedsllm.state.errors, which
fedsllm/wire/status.py gives their codes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fed_server.aggregate import (
    check_compatible,
    check_finite_float,
    parse_adapter,
    serialize_adapter,
)
from fed_server.checkpoint import load_checkpoint, save_checkpoint
from fedsllm.errors import StateError, WireError
from fedsllm.model.fedavg import AdapterState, fedavg
from fedsllm.state import (
    DurableRounds,
    FedServerStore,
    RoundRecord,
    SubmitResult,
    UpdateKey,
    open_store,
)
from fedsllm.state.store import StorageError
from fedsllm.trace import Tracer

log = logging.getLogger(__name__)

STATE_DIR = "state"
"""The fed server's store: RUN_DIR/state (fedsllm.state.open_store("fed_server", ...))."""


class ServerStoppingError(Exception):
    """The server is stopping: a waiter gives up at once (the service answers UNAVAILABLE)."""


class CallerGoneError(Exception):
    """The caller a waiter waited for has gone (a cancelled or killed client):
    the wait ends at once, so its thread and its stream slot are freed."""


WAIT_POLL_S = 0.5
"""How often a waiting pull checks that its caller is still there, when its
cancellation was not signalled through `wake` (as controller_service does)."""


@dataclass(frozen=True)
class JoinResult:
    current_round: int
    num_rounds: int


@dataclass(frozen=True)
class RoundSnapshot:
    """A copy of the observable state, for tests that check nothing changed."""

    completed_round: int
    joined: dict[int, int]
    pending: tuple[int, ...]
    """Clients whose update the open round accepted."""
    global_rounds: tuple[int, ...]
    """Round of the latest global adapter, () before the first."""


def fedavg_blobs(blobs: Sequence[bytes], weights: Sequence[float]) -> bytes:
    """FedAvg of safetensors adapters (DurableRounds' `aggregate`), in the given order."""
    return serialize_adapter(fedavg([parse_adapter(b) for b in blobs], weights))


def fed_server_store(run_dir: Path | None) -> FedServerStore:
    """RUN_DIR/state on disk, or memory when the server has no run directory.
    For the fed server itself, at its start: it owns the directory, so the
    temp files a killed predecessor left there are removed."""
    store = open_store("fed_server", None if run_dir is None else run_dir / STATE_DIR, owner=True)
    assert isinstance(store, FedServerStore)
    return store


class RoundState:
    def __init__(
        self,
        *,
        num_clients: int,
        num_rounds: int,
        run_dir: Path | None,
        tracer: Tracer,
        deadline_s: float = 0.0,
        min_clients: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_aggregated: Callable[[int], None] | None = None,
        template: AdapterState | None = None,
        store: FedServerStore | None = None,
    ) -> None:
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.run_dir = run_dir
        self.tracer = tracer
        self.deadline_s = deadline_s
        self.min_clients = min_clients
        self.clock = clock
        self.on_aggregated = on_aggregated
        """Called with the round just aggregated, before waiting clients are released,
        so the controller's allocation for the next round is out first."""
        self.store = store if store is not None else fed_server_store(run_dir)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        """Set once by stop(); read without the lock (PullGlobal checks it per chunk,
        and a close holds the lock through FedAvg and the disk commit)."""
        self._rounds = DurableRounds.open(
            self.store,
            num_clients=num_clients,
            num_rounds=num_rounds,
            min_clients=min_clients,
            deadline_s=deadline_s,
            now=clock(),
            aggregate=fedavg_blobs,
        )
        self._template: AdapterState | None = template
        """Keys, shapes and dtypes every push must have: the model's (`template`);
        without one (a dtype numpy lacks), the first accepted update's, never a
        refused peer's (the round-0 hijack)."""
        if self._template is None:
            self._template = self._resumed_template()
        if self._rounds.resumed:
            self._log_resume()
            self._sync_checkpoint_files()
            with self._cond:
                # Killed after the round's last update was committed and before
                # the round was: nobody else would close it (every retry is a replay).
                self._close_if_due_locked()

    # ------------------------------------------------------------ start-up
    def _resumed_template(self) -> AdapterState | None:
        done, blob = self._rounds.latest_global()
        if blob is not None:
            return parse_adapter(blob)
        for a in self._rounds.ledger.accepted():
            update = self.store.update(UpdateKey(a.client_id, a.round, a.attempt))
            if update is not None:
                return parse_adapter(update)
        return None

    def _log_resume(self) -> None:
        ledger = self._rounds.ledger
        done, _ = self._rounds.latest_global()
        log.info(
            "resumed from %s: %d of %d clients joined %s, round %d open with updates of "
            "clients %s, latest global adapter: %s, %d round records",
            self.store.backend.location,
            len(ledger.members),
            self.num_clients,
            sorted(ledger.members),
            ledger.open_round,
            [a.client_id for a in ledger.accepted()],
            f"round {done}" if done >= 0 else "none",
            len(self.store.backend.names("rounds/")),
        )

    def _sync_checkpoint_files(self) -> None:
        """The store commits a round before checkpoint.json and adapters/ are
        written: after a crash in between, bring those files up to the store."""
        done, blob = self._rounds.latest_global()
        if self.run_dir is None or blob is None:
            return
        if load_checkpoint(self.run_dir).completed_round < done:
            save_checkpoint(self.run_dir, done, blob)
            log.info("rewrote checkpoint.json and adapters/ for round %d from the store", done)

    # ------------------------------------------------------------ queries
    @property
    def current_round(self) -> int:
        with self._cond:
            return self._rounds.ledger.open_round

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._rounds.ledger.finished

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def snapshot(self) -> RoundSnapshot:
        with self._cond:
            ledger = self._rounds.ledger
            done, blob = self._rounds.latest_global()
            return RoundSnapshot(
                ledger.closed_round,
                ledger.members,
                tuple(a.client_id for a in ledger.accepted()),
                (done,) if blob is not None else (),
            )

    def round_records(self) -> list[RoundRecord]:
        """Every closed round's record (who was used, who was missing and why)."""
        return [RoundRecord.from_dict(d) for d in self.store.round_records()]

    def _check_client(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise WireError("client_id", f"{client_id} is not in [0, {self.num_clients})")

    # ------------------------------------------------------------ commands
    def join(self, client_id: int, num_samples: int) -> JoinResult:
        """Admit a client; joining again with the same sample count is a no-op
        (a client, or this server, that restarted). The ledger checks the id."""
        with self._cond:
            known = client_id in self._rounds.ledger.members
            info = self._rounds.join(client_id, num_samples, self.clock())
            log.info(
                "client %d %s with %d samples (round %d)",
                client_id,
                "joined again" if known else "joined",
                num_samples,
                info.current_round,
            )
            return JoinResult(current_round=info.current_round, num_rounds=info.num_rounds)

    def submit(
        self,
        client_id: int,
        round_index: int,
        blob: bytes,
        num_samples: int | None = None,
        attempt: int = 0,
    ) -> SubmitResult:
        """Accept client `client_id`'s adapter for `round_index` once per
        (client, round, attempt), closing the round when it is due.

        An identical retry returns the first acceptance with replayed=True.
        Raises WireError for a malformed adapter (checked before anything is
        accepted) and the typed refusals of fedsllm.state.errors otherwise.
        """
        self._check_client(client_id)
        state = parse_adapter(blob)  # parse outside the lock: it is the slow part
        with self._cond:
            joined = self._rounds.ledger.members.get(client_id)
            if num_samples is not None and joined is not None and num_samples != joined:
                raise WireError(
                    "num_samples", f"={num_samples}, but client {client_id} joined with {joined}"
                )
            if self._template is not None:
                check_compatible(state, self._template)
            else:
                check_finite_float(state)
            result = self._rounds.submit(client_id, round_index, attempt, blob, self.clock())
            if result.replayed:
                log.info(
                    "round %d: client %d attempt %d pushed again: already accepted (seq %d)",
                    round_index,
                    client_id,
                    attempt,
                    result.acceptance.seq,
                )
                return result
            if self._template is None:
                self._template = state
            log.info(
                "round %d: adapter from client %d, attempt %d (%d/%d)",
                round_index,
                client_id,
                attempt,
                result.acceptance.seq,
                self.num_clients,
            )
            # The update is committed: whatever happens to the close, the pusher
            # is told so (else it would retry, and count, nothing new). A close
            # that failed leaves the round due: poll_deadline closes it.
            try:
                self._close_if_due_locked()
            except Exception:
                log.exception(
                    "round %d: closing failed after client %d's update was accepted; "
                    "the next poll closes it",
                    round_index,
                    client_id,
                )
            return result

    def poll_deadline(self) -> bool:
        """Close the open round when it is due: past its deadline with the
        updates at hand (when at least min_clients reported), or complete with
        a close that failed before (a full disk); True when it did."""
        with self._cond:
            try:
                return self._close_if_due_locked() is not None
            except StorageError as err:  # a full disk: the next poll tries again
                log.warning("round %d: could not close: %s", self._rounds.ledger.open_round, err)
                return False

    def _close_if_due_locked(self) -> RoundRecord | None:
        now = self.clock()
        if self._rounds.ledger.due(now) is None:
            return None
        round_index = self._rounds.ledger.open_round
        try:
            with self.tracer.span("aggregation", round=round_index) as span:
                record = self._rounds.close_if_due(now)  # aggregated and committed to the store
                assert record is not None
                _, blob = self._rounds.latest_global()
                assert blob is not None
                span.bytes = len(blob)
                span.extra = {"clients": record.client_ids, "weights": record.weights}
            self._after_close_locked(record, blob)
        finally:
            # Once the store committed, whatever fails after it (the trace, the
            # run-directory files) must not keep the waiters asleep; a wake
            # when the commit itself failed is harmless (they wait again).
            self._cond.notify_all()
        return record

    def _after_close_locked(self, record: RoundRecord, blob: bytes) -> None:
        """What follows a committed close: the run-directory files, the trace,
        the hook. None of it is the round's truth (the store is), so a failure
        here is logged, never raised past the waiters' release."""
        if self.run_dir is not None:
            try:
                save_checkpoint(self.run_dir, record.round, blob)
            except OSError:
                # The next start's _sync_checkpoint_files rewrites them from the store.
                log.exception(
                    "round %d: could not write checkpoint.json/adapters/ (the store has "
                    "the round; the next start rewrites them)",
                    record.round,
                )
        self.tracer.event(
            "round_done",
            round=record.round,
            num_clients=len(record.accepted),
            reason=record.reason,
            missing=dict(record.missing),
        )
        if record.missing:
            log.warning(
                "round %d closed (%s) with clients %s; missing: %s",
                record.round,
                record.reason,
                record.client_ids,
                ", ".join(f"client {k} ({why})" for k, why in sorted(record.missing.items())),
            )
        if self.on_aggregated is not None:
            try:
                self.on_aggregated(record.round)
            except Exception:  # a failed re-solve must not lose the aggregate
                log.exception("round %d: the after-aggregation hook failed", record.round)
        log.info("round %d aggregated from clients %s", record.round, record.client_ids)

    def stop(self) -> None:
        """Wake every waiter: each ends with ServerStoppingError (the server is going away)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiter to check its `alive` (a caller went away); changes nothing."""
        with self._cond:
            self._cond.notify_all()

    def wait_global(self, round_index: int, timeout_s: float) -> bytes | None:
        """The global adapter of `round_index` (or later); see `wait_global_round`."""
        return self.wait_global_round(round_index, timeout_s)[1]

    def wait_global_round(
        self,
        round_index: int,
        timeout_s: float,
        alive: Callable[[], bool] | None = None,
        poll_s: float = WAIT_POLL_S,
    ) -> tuple[int, bytes | None]:
        """Block until the global adapter of `round_index` exists; returns it with
        the round it belongs to, read together under the lock.

        Round -1 means "before any aggregation": the initial adapter is each
        client's identically seeded LoRA init, so there is nothing to send.
        Asking for a round the server has moved past returns the latest one
        (a straggler catching up), labelled with its own round. Raises
        ServerStoppingError as soon as `stop()` is called, TimeoutError after
        `timeout_s`, CallerGoneError once `alive()` is false: checked every
        `poll_s` seconds and whenever `wake()` is called (a gRPC handler wakes
        it from its context's done-callback, so a cancelled call ends at once).
        """
        if round_index < -1 or round_index >= self.num_rounds:
            raise WireError("round", f"{round_index} is not in [-1, {self.num_rounds})")
        with self._cond:

            def ready() -> bool:
                return self._rounds.latest_global()[0] >= round_index

            if round_index == -1 and self._rounds.latest_global()[1] is None:
                return -1, None
            if not ready():
                log.debug("a pull waits for the global adapter of round %d", round_index)
            end = time.monotonic() + timeout_s
            while not (self._stopping.is_set() or ready()):
                if alive is not None and not alive():
                    raise CallerGoneError(f"the pull of round {round_index} was cancelled")
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, poll_s) if alive is not None else left)
            if not ready():
                if self._stopping.is_set():
                    raise ServerStoppingError("fed server stopping")
                raise TimeoutError(
                    f"global adapter of round {round_index} not ready after {timeout_s:.0f} s"
                )
            done, blob = self._rounds.latest_global()
            if blob is None:
                raise StateError(f"round {done}: the store holds no global adapter")
            return done, blob
