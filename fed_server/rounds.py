"""The fed server's round state machine: who joined, who reported, when to aggregate.

Round r collects one client adapter per client; when all K have reported (or
the deadline passed with at least `min_clients`), FedAvg gives the global
adapter of round r, which is checkpointed and released to `wait_global`.
Every request is validated completely before any state changes, so a
refused request leaves the state exactly as it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fed_server.aggregate import (
    AdapterState,
    check_compatible,
    check_finite_float,
    fedavg,
    parse_adapter,
    serialize_adapter,
)
from fed_server.checkpoint import Checkpoint, save_checkpoint
from fedsllm.errors import StateError, WireError
from fedsllm.trace import Tracer

log = logging.getLogger(__name__)


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
    global_rounds: tuple[int, ...]


class RoundState:
    def __init__(
        self,
        *,
        num_clients: int,
        num_rounds: int,
        run_dir: Path | None,
        tracer: Tracer,
        checkpoint: Checkpoint | None = None,
        deadline_s: float = 0.0,
        min_clients: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_aggregated: Callable[[int], None] | None = None,
        template: AdapterState | None = None,
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
        self._cond = threading.Condition()
        self._joined: dict[int, int] = {}
        self._pending: dict[int, AdapterState] = {}
        self._globals: dict[int, bytes] = {}
        self._template: AdapterState | None = template
        """Keys, shapes and dtypes every push must have: the model's (`template`),
        then each aggregate's; never a peer's first push (the round-0 hijack)."""
        ckpt = checkpoint or Checkpoint(completed_round=-1, adapter=None)
        self._completed = ckpt.completed_round
        if ckpt.adapter is not None:
            self._globals[ckpt.completed_round] = ckpt.adapter
            self._template = parse_adapter(ckpt.adapter)
        self._round_started = clock()

    # ------------------------------------------------------------ queries
    @property
    def current_round(self) -> int:
        return self._completed + 1

    @property
    def finished(self) -> bool:
        return self._completed >= self.num_rounds - 1

    def snapshot(self) -> RoundSnapshot:
        with self._cond:
            return RoundSnapshot(
                self._completed,
                dict(self._joined),
                tuple(sorted(self._pending)),
                tuple(sorted(self._globals)),
            )

    def _check_client(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise WireError("client_id", f"{client_id} is not in [0, {self.num_clients})")

    # ------------------------------------------------------------ commands
    def join(self, client_id: int, num_samples: int) -> JoinResult:
        self._check_client(client_id)
        if num_samples < 1:
            raise WireError("num_samples", f"{num_samples}, expected >= 1")
        with self._cond:
            known = self._joined.get(client_id)
            if known is not None and known != num_samples:
                raise StateError(
                    f"client {client_id} rejoined with num_samples={num_samples}, "
                    f"joined before with {known}"
                )
            if not self._joined:
                # The first round's deadline runs from the first join, not from
                # this server's start: the clients' own start-up (model build,
                # data) is no part of the round.
                self._round_started = self.clock()
            self._joined[client_id] = num_samples
            log.info(
                "client %d joined with %d samples (round %d)",
                client_id,
                num_samples,
                self.current_round,
            )
            return JoinResult(current_round=self.current_round, num_rounds=self.num_rounds)

    def submit(
        self, client_id: int, round_index: int, blob: bytes, num_samples: int | None = None
    ) -> None:
        """Accept client `client_id`'s adapter for `round_index`, aggregating when complete."""
        self._check_client(client_id)
        state = parse_adapter(blob)  # parse outside the lock: it is the slow part
        with self._cond:
            if client_id not in self._joined:
                raise StateError(f"client {client_id} has not joined")
            if num_samples is not None and num_samples != self._joined[client_id]:
                raise WireError(
                    "num_samples",
                    f"={num_samples}, but client {client_id} joined with {self._joined[client_id]}",
                )
            if round_index != self.current_round:
                raise StateError(
                    f"round {round_index} is not the current round {self.current_round}"
                )
            if self.finished:
                # current_round is num_rounds here: without this, an adapter for
                # a round past the last one would be accepted and aggregated.
                raise StateError(
                    f"round {round_index} refused: all {self.num_rounds} rounds are done"
                )
            if client_id in self._pending:
                raise StateError(f"client {client_id} already reported round {round_index}")
            if self._template is not None:
                check_compatible(state, self._template)
            else:
                check_finite_float(state)
                first = next(iter(self._pending.values()), None)
                if first is not None:
                    check_compatible(state, first)
            self._pending[client_id] = state
            log.info(
                "round %d: adapter from client %d (%d/%d)",
                round_index,
                client_id,
                len(self._pending),
                self.num_clients,
            )
            if len(self._pending) == self.num_clients:
                self._aggregate_locked()

    def poll_deadline(self) -> bool:
        """Aggregate a late round with the adapters at hand; True when it did."""
        if self.deadline_s <= 0:
            return False
        with self._cond:
            late = self.clock() - self._round_started > self.deadline_s
            if late and len(self._pending) >= self.min_clients and not self.finished:
                log.warning(
                    "round %d: deadline passed, aggregating %d/%d adapters",
                    self.current_round,
                    len(self._pending),
                    self.num_clients,
                )
                self._aggregate_locked()
                return True
        return False

    def _aggregate_locked(self) -> None:
        round_index = self.current_round
        with self.tracer.span("aggregation", round=round_index) as span:
            ids = sorted(self._pending)
            weights = [float(self._joined[i]) for i in ids]
            merged = fedavg([self._pending[i] for i in ids], weights)
            blob = serialize_adapter(merged)
            if self.run_dir is not None:
                save_checkpoint(self.run_dir, round_index, blob)
            span.bytes = len(blob)
            span.extra = {"clients": ids, "weights": weights}
        self._template = merged
        self._globals[round_index] = blob
        self._pending.clear()
        self._completed = round_index
        self._round_started = self.clock()
        self.tracer.event("round_done", round=round_index, num_clients=len(ids))
        if self.on_aggregated is not None:
            try:
                self.on_aggregated(round_index)
            except Exception:  # a failed re-solve must not lose the aggregate
                log.exception("round %d: the after-aggregation hook failed", round_index)
        log.info("round %d aggregated from clients %s", round_index, ids)
        self._cond.notify_all()

    def wait_global(self, round_index: int, timeout_s: float) -> bytes | None:
        """The global adapter of `round_index` (or later); see `wait_global_round`."""
        return self.wait_global_round(round_index, timeout_s)[1]

    def wait_global_round(self, round_index: int, timeout_s: float) -> tuple[int, bytes | None]:
        """Block until the global adapter of `round_index` exists; returns it with
        the round it belongs to, read together under the lock.

        Round -1 means "before any aggregation": the initial adapter is each
        client's identically seeded LoRA init, so there is nothing to send.
        Asking for a round the server has moved past returns the latest one
        (a straggler catching up), labelled with its own round.
        """
        if round_index < -1 or round_index >= self.num_rounds:
            raise WireError("round", f"{round_index} is not in [-1, {self.num_rounds})")
        with self._cond:
            if round_index == -1 and self._completed == -1:
                return -1, None
            ok = self._cond.wait_for(lambda: self._completed >= round_index, timeout=timeout_s)
            if not ok:
                raise TimeoutError(
                    f"global adapter of round {round_index} not ready after {timeout_s:.0f} s"
                )
            return self._completed, self._globals[self._completed]
