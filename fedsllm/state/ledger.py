"""The fed server's round rules as a pure object: membership, idempotent updates, closing.

`RoundLedger` decides; it holds no tensors, does no I/O and reads no clock
(every call takes `now`, seconds on any clock the caller keeps). A push is
keyed by (client, round, attempt):

- the first push of a key is accepted, with a sequence number in its round;
- the same key again with the same tensors (a retry after a lost reply) gets
  back the very same `Acceptance`, even after its round closed;
- the same key with other tensors is a ConflictingUpdateError; another
  attempt of a client already counted in that round is a DuplicateUpdateError,
  so no round ever counts a client twice;
- refusals say which state the push met: NotJoinedError, LateUpdateError
  (the open round is past its deadline and closes without it),
  RoundClosedError, RoundNotOpenError, RunFinishedError.

A round is due when every client reported ("complete"), or when its
deadline passed with at least `min_clients` reports ("deadline"). `close`
returns the `RoundRecord`: the accepted updates in client order with their
FedAvg weights, and every client missing with why ("not_joined",
"no_update", "late").

Every mutation takes an optional `commit(state)` callback called with the
ledger's next `to_dict()` before anything changes here: when it raises (a
full disk), the ledger is exactly as it was. The caller holds its own lock;
this class is not thread-safe. Aggregation is left to the caller.

What a push costs stays flat over a long run: `to_dict()` holds only what
the open round needs (membership, its acceptances, its late marks), and a
mutation copies only that small state. Acceptances of closed rounds live in
their RoundRecords (the store's rounds/*.json); the ledger keeps those of the
last `replay_rounds` closed rounds in memory, so a retried push of a round
that just closed is still answered "replayed" (`restore` rebuilds them from
the records). A retry of an older round is RoundClosedError: catch up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

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
)

Commit = Callable[[dict[str, Any]], None]

REPLAY_ROUNDS = 4
"""Closed rounds whose acceptances the ledger keeps to answer a retried push "replayed"."""


@dataclass(frozen=True)
class Acceptance:
    """The answer to an accepted push; a retried identical push gets this same value."""

    client_id: int
    round: int
    attempt: int
    digest: str
    """fedsllm.state.format.tensor_digest of the update."""
    num_samples: int
    """The client's FedAvg weight D_k."""
    seq: int
    """1 for the first update accepted in its round, 2 for the next..."""


@dataclass(frozen=True)
class SubmitResult:
    acceptance: Acceptance
    replayed: bool
    """True when this was a retry of a push already accepted: nothing changed."""


@dataclass(frozen=True)
class JoinInfo:
    current_round: int
    num_rounds: int


@dataclass(frozen=True)
class RoundRecord:
    """What a closed round used and what it lacked."""

    round: int
    reason: str
    """"complete" (every client reported) or "deadline"."""
    opened_at: float
    closed_at: float
    accepted: tuple[Acceptance, ...]
    """In client order: the order fed_server/rounds.py aggregates in."""
    missing: dict[int, str]
    """Client -> "not_joined" | "no_update" | "late"."""

    @property
    def client_ids(self) -> list[int]:
        return [a.client_id for a in self.accepted]

    @property
    def weights(self) -> list[float]:
        """FedAvg weights, as fed_server/rounds.py computes them: float(num_samples)."""
        return [float(a.num_samples) for a in self.accepted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "accepted": [asdict(a) for a in self.accepted],
            "missing": {str(k): v for k, v in sorted(self.missing.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        return cls(
            round=int(data["round"]),
            reason=str(data["reason"]),
            opened_at=float(data["opened_at"]),
            closed_at=float(data["closed_at"]),
            accepted=tuple(Acceptance(**a) for a in data["accepted"]),
            missing={int(k): str(v) for k, v in data["missing"].items()},
        )


@dataclass(frozen=True)
class _OpenState:
    """Everything a mutation may change, all small (O(num_clients)). A mutation
    builds the next one, copying only the dict it changes, and swaps it in
    after the commit; dicts here are never changed in place."""

    closed: int = -1
    opened_at: float | None = None
    members: dict[int, int] = field(default_factory=dict)
    accepted: dict[int, Acceptance] = field(default_factory=dict)
    """Client -> its acceptance in the open round."""
    late: dict[int, str] = field(default_factory=dict)


class RoundLedger:
    def __init__(
        self,
        *,
        num_clients: int,
        num_rounds: int,
        min_clients: int = 1,
        deadline_s: float = 0.0,
        replay_rounds: int = REPLAY_ROUNDS,
    ) -> None:
        if num_clients < 1 or num_rounds < 1:
            raise ValueError(f"num_clients={num_clients}, num_rounds={num_rounds}: need >= 1")
        if not 1 <= min_clients <= num_clients:
            raise ValueError(f"min_clients={min_clients} is not in [1, {num_clients}]")
        if replay_rounds < 0:
            raise ValueError(f"replay_rounds={replay_rounds}: need >= 0")
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.min_clients = min_clients
        self.deadline_s = deadline_s
        """0 = no deadline: a round closes only when every client reported."""
        self.replay_rounds = replay_rounds
        self._s = _OpenState()
        self._recent: dict[int, dict[int, Acceptance]] = {}
        """Round -> client -> acceptance, for the last `replay_rounds` closed rounds."""

    # ------------------------------------------------------------ queries
    @property
    def open_round(self) -> int:
        return self._s.closed + 1

    @property
    def closed_round(self) -> int:
        return self._s.closed

    @property
    def finished(self) -> bool:
        return self._s.closed >= self.num_rounds - 1

    @property
    def members(self) -> dict[int, int]:
        return dict(self._s.members)

    def accepted(self, round_index: int | None = None) -> list[Acceptance]:
        """Acceptances of `round_index` (default: the open round), in client order;
        a closed round's only while it is among the last `replay_rounds`."""
        found = self._round_map(self.open_round if round_index is None else round_index)
        return [found[c] for c in sorted(found)]

    def _round_map(self, round_index: int) -> dict[int, Acceptance]:
        """Client -> acceptance of a round: the open one, or a recent closed one."""
        if round_index == self.open_round:
            return self._s.accepted
        return self._recent.get(round_index, {})

    def _known(self, client_id: int, round_index: int) -> Acceptance | None:
        return self._round_map(round_index).get(client_id)

    def past_deadline(self, now: float) -> bool:
        return (
            self.deadline_s > 0
            and self._s.opened_at is not None
            and now - self._s.opened_at > self.deadline_s
        )

    def due(self, now: float) -> str | None:
        """Why the open round may close now ("complete" / "deadline"), or None."""
        if self.finished:
            return None
        num = len(self._s.accepted)
        if num == self.num_clients:
            return "complete"
        if self.past_deadline(now) and num >= self.min_clients:
            return "deadline"
        return None

    # ------------------------------------------------------------ commands
    def _checked_client(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise WireError("client_id", f"{client_id} is not in [0, {self.num_clients})")

    def _apply(self, nxt: _OpenState, commit: Commit | None) -> None:
        if commit is not None:
            commit(self._doc(nxt))  # raises: nothing below runs, self is unchanged
        self._s = nxt

    def join(
        self, client_id: int, num_samples: int, now: float, commit: Commit | None = None
    ) -> JoinInfo:
        """Admit (or re-admit, idempotently) a client; the first join starts round 0's clock."""
        self._checked_client(client_id)
        if num_samples < 1:
            raise WireError("num_samples", f"{num_samples}, expected >= 1")
        known = self._s.members.get(client_id)
        if known is not None and known != num_samples:
            raise MembershipError(
                f"client {client_id} rejoined with num_samples={num_samples}, "
                f"joined before with {known}"
            )
        if known is None:
            nxt = replace(
                self._s,
                members={**self._s.members, client_id: num_samples},
                opened_at=now if self._s.opened_at is None else self._s.opened_at,
            )
            self._apply(nxt, commit)
        return JoinInfo(self.open_round, self.num_rounds)

    def submit(
        self,
        client_id: int,
        round_index: int,
        attempt: int,
        digest: str,
        now: float,
        commit: Commit | None = None,
    ) -> SubmitResult:
        """Accept (client_id, round_index, attempt) once; see the module docstring."""
        self._checked_client(client_id)
        if round_index < 0 or attempt < 0:
            raise WireError("round/attempt", f"{round_index}/{attempt}, expected >= 0")
        if client_id not in self._s.members:
            raise NotJoinedError(client_id, round_index, "has not joined: join again")
        known = self._known(client_id, round_index)
        if known is not None:
            if known.attempt != attempt:
                raise DuplicateUpdateError(client_id, round_index, known.attempt)
            if known.digest != digest:
                raise ConflictingUpdateError(
                    client_id, round_index, f"attempt {attempt} was accepted with other tensors"
                )
            return SubmitResult(known, replayed=True)
        if round_index < self.open_round:
            raise RoundClosedError(
                client_id,
                round_index,
                f"round closed without this update (open round is {self.open_round}); "
                "pull the latest global adapter",
            )
        if self.finished:
            raise RunFinishedError(client_id, round_index, f"all {self.num_rounds} rounds are done")
        if round_index > self.open_round:
            raise RoundNotOpenError(
                client_id, round_index, f"not open yet (open round is {self.open_round})"
            )
        if self.due(now) == "deadline":
            if client_id not in self._s.late:
                self._apply(replace(self._s, late={**self._s.late, client_id: "late"}), commit)
            raise LateUpdateError(
                client_id,
                round_index,
                f"past the {self.deadline_s:g} s deadline; the round closes with "
                f"{len(self._s.accepted)} updates",
            )
        acceptance = Acceptance(
            client_id=client_id,
            round=round_index,
            attempt=attempt,
            digest=digest,
            num_samples=self._s.members[client_id],
            seq=len(self._s.accepted) + 1,
        )
        self._apply(replace(self._s, accepted={**self._s.accepted, client_id: acceptance}), commit)
        return SubmitResult(acceptance, replayed=False)

    def close(
        self, now: float, commit: Callable[[RoundRecord, dict[str, Any]], None] | None = None
    ) -> RoundRecord:
        """Close the open round when it is due; `commit(record, next_state)` persists
        it (aggregate from record.accepted, then store) before the ledger moves on."""
        reason = self.due(now)
        if reason is None:
            raise StateError(
                f"round {self.open_round} is not due: {len(self._s.accepted)}/{self.num_clients} "
                f"updates, min_clients={self.min_clients}, past deadline={self.past_deadline(now)}"
            )
        accepted = tuple(self.accepted())
        got = {a.client_id for a in accepted}
        missing = {
            c: self._s.late.get(c, "no_update" if c in self._s.members else "not_joined")
            for c in range(self.num_clients)
            if c not in got
        }
        record = RoundRecord(
            round=self.open_round,
            reason=reason,
            opened_at=self._s.opened_at if self._s.opened_at is not None else now,
            closed_at=now,
            accepted=accepted,
            missing=missing,
        )
        nxt = replace(self._s, closed=self._s.closed + 1, opened_at=now, accepted={}, late={})
        if commit is not None:
            commit(record, self._doc(nxt))  # raises: self is unchanged
        self._s = nxt
        self._remember(record.round, accepted)
        return record

    def _remember(self, round_index: int, accepted: Iterable[Acceptance]) -> None:
        """Keep a closed round's acceptances for retries; forget the oldest beyond
        `replay_rounds` (their retries meet RoundClosedError: catch up)."""
        self._recent[round_index] = {a.client_id: a for a in accepted}
        for old in sorted(self._recent)[: max(len(self._recent) - self.replay_rounds, 0)]:
            del self._recent[old]

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The open round's state: its size depends on num_clients, not on how
        many rounds closed ("accepted" lists the open round's acceptances)."""
        return self._doc(self._s)

    def _doc(self, s: _OpenState) -> dict[str, Any]:
        return {
            "num_clients": self.num_clients,
            "num_rounds": self.num_rounds,
            "min_clients": self.min_clients,
            "closed_round": s.closed,
            "members": {str(k): v for k, v in sorted(s.members.items())},
            "accepted": [asdict(s.accepted[c]) for c in sorted(s.accepted)],
            "late": {str(k): v for k, v in sorted(s.late.items())},
            "started": s.opened_at is not None,
        }

    @classmethod
    def restore(
        cls,
        data: Mapping[str, Any],
        *,
        num_clients: int,
        num_rounds: int,
        min_clients: int = 1,
        deadline_s: float = 0.0,
        replay_rounds: int = REPLAY_ROUNDS,
        now: float,
        records: Iterable[RoundRecord] = (),
    ) -> RoundLedger:
        """The ledger of `to_dict()` output, checked against this run's settings.

        The open round's deadline restarts at `now`: clock readings of the
        process that wrote the state mean nothing to this one, and a round
        that lost its server deserves the time it lost. `records` are closed
        rounds' records (the store's, any number, any order): the last
        `replay_rounds` of those the state counts as closed rebuild the
        replay index. A state written when "accepted" held every round's
        acceptances reads the same: only the open round's are kept."""
        for name, want in (("num_clients", num_clients), ("num_rounds", num_rounds)):
            if int(data[name]) != want:
                raise StateError(
                    f"the saved rounds were for {name}={data[name]}, this run has {want}: "
                    "not the same run"
                )
        ledger = cls(
            num_clients=num_clients,
            num_rounds=num_rounds,
            min_clients=min_clients,
            deadline_s=deadline_s,
            replay_rounds=replay_rounds,
        )
        closed = int(data["closed_round"])
        ledger._s = _OpenState(
            closed=closed,
            opened_at=now if data.get("started") else None,
            members={int(k): int(v) for k, v in data["members"].items()},
            accepted={
                int(a["client_id"]): Acceptance(**a)
                for a in data["accepted"]
                if int(a["round"]) == closed + 1
            },
            late={int(k): str(v) for k, v in data["late"].items()},
        )
        # A record of a round the state has not closed is from a crash inside
        # the close: that round is still open here and will be closed again.
        for record in sorted((r for r in records if r.round <= closed), key=lambda r: r.round):
            ledger._remember(record.round, record.accepted)
        return ledger
