"""The fed server's ledger bound to its store: every decision persisted before it is answered.

`DurableRounds` is what phase 2 puts inside fed_server/rounds.py's lock:

    rounds = DurableRounds.open(store, num_clients=K, num_rounds=R,
                                min_clients=m, deadline_s=d, now=clock(),
                                aggregate=my_fedavg_of_blobs)
    rounds.join(client_id, num_samples, now)
    result = rounds.submit(client_id, round, attempt, blob, now)   # idempotent
    record = rounds.close_if_due(now)    # aggregates, persists, returns the record
    round_done, blob = rounds.latest_global()

On open it resumes from the store: membership, the open round, the updates
already accepted, the latest global adapter, and the acceptances of the
last closed rounds (from their records). Each accepted update, each
join, each closed round is written (fedsllm/state/store.py's commit order)
before the ledger moves, so what a client was told survives a crash.
`aggregate(blobs, weights) -> blob` is the role's wrapper of the FedAvg
(fed_server.rounds.fedavg_blobs around fedsllm.model.fedavg: parsing and
serializing blobs is the role's, and the core never imports a role); it gets
the accepted blobs in client order. Not
thread-safe: the caller holds its lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedsllm.state.format import tensor_digest
from fedsllm.state.ledger import (
    REPLAY_ROUNDS,
    JoinInfo,
    RoundLedger,
    RoundRecord,
    SubmitResult,
)
from fedsllm.state.store import FedServerStore, UpdateKey

Aggregate = Callable[[Sequence[bytes], Sequence[float]], bytes]


class DurableRounds:
    def __init__(self, ledger: RoundLedger, store: FedServerStore, aggregate: Aggregate) -> None:
        self.ledger = ledger
        self.store = store
        self.aggregate = aggregate
        snap = store.load()
        self._global_round = snap.global_round
        self._global = snap.global_adapter

    @classmethod
    def open(
        cls,
        store: FedServerStore,
        *,
        num_clients: int,
        num_rounds: int,
        min_clients: int = 1,
        deadline_s: float = 0.0,
        replay_rounds: int = REPLAY_ROUNDS,
        now: float,
        aggregate: Aggregate,
    ) -> DurableRounds:
        """Resume from `store` (a fresh ledger when it holds none). The last
        closed rounds' records rebuild the ledger's replay index, so a push
        retried across the restart is still answered "replayed"."""
        saved = store.load().ledger
        settings = dict(
            num_clients=num_clients,
            num_rounds=num_rounds,
            min_clients=min_clients,
            deadline_s=deadline_s,
            replay_rounds=replay_rounds,
        )
        if saved is None:
            return cls(RoundLedger(**settings), store, aggregate)
        # One more than kept: the newest record may be of a round whose close
        # the crash cut short (still open in `saved`), which restore skips.
        records = [RoundRecord.from_dict(d) for d in store.round_records(last=replay_rounds + 1)]
        ledger = RoundLedger.restore(saved, now=now, records=records, **settings)
        return cls(ledger, store, aggregate)

    @property
    def resumed(self) -> bool:
        return bool(self.ledger.members)

    def join(self, client_id: int, num_samples: int, now: float) -> JoinInfo:
        return self.ledger.join(client_id, num_samples, now, commit=self.store.record_join)

    def submit(
        self, client_id: int, round_index: int, attempt: int, blob: bytes, now: float
    ) -> SubmitResult:
        """Accept the update once (see RoundLedger.submit); its tensors are stored first."""
        key = UpdateKey(client_id, round_index, attempt)
        return self.ledger.submit(
            client_id,
            round_index,
            attempt,
            tensor_digest(blob),
            now,
            commit=lambda state: self.store.record_update(key, blob, state),
        )

    def close_if_due(self, now: float) -> RoundRecord | None:
        """Close the open round when due: aggregate its updates, persist, advance."""
        if self.ledger.due(now) is None:
            return None
        merged: list[bytes] = []

        def commit(record: RoundRecord, state: dict) -> None:
            blobs = []
            for a in record.accepted:
                blob = self.store.update(UpdateKey(a.client_id, a.round, a.attempt))
                if blob is None:  # the store lost what the ledger accepted: never go on
                    raise FileNotFoundError(f"round {a.round}: update of client {a.client_id}")
                blobs.append(blob)
            merged.append(self.aggregate(blobs, record.weights))
            self.store.record_round(record.to_dict(), merged[0], state)

        record = self.ledger.close(now, commit=commit)
        self._global_round, self._global = record.round, merged[0]
        return record

    def latest_global(self) -> tuple[int, bytes | None]:
        """(round, adapter) of the latest aggregate; (-1, None) before the first."""
        return self._global_round, self._global
