"""The client's training loop (docs/MODEL.md section 1), top to bottom.

One function runs one local iteration and shows its five steps in order,
each inside a named trace span: client forward, uplink, server compute (seen
from here as the wait for the reply), downlink, client backward + LoRA step.
The loop talks to the servers only through the two small link interfaces
below, so it knows nothing of gRPC; client/remote.py implements them.

With a ClientStore the loop checkpoints each round's update before its push
(and marks it pushed after), and a restarted client resumes from it (resume_point):
it pushes the saved update of an unpushed round again, byte for byte and
under the same attempt, goes straight to the global adapter of a round it
pushed, or rejoins at the fed server's current round; its data stream
continues where it stopped.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedsllm.data.dataset import Batch, TokenDataset
from fedsllm.errors import StateError
from fedsllm.trace import Tracer

log = logging.getLogger(__name__)


class StragglerError(StateError):
    """The fed server refused this round's update because the round went on
    without it (late, already closed, not open, or the run finished): not a
    failure of the run; the client catches up with the latest global adapter."""

    def __init__(self, round_index: int, reason: str, details: str = "") -> None:
        self.round_index = round_index
        self.reason = reason
        super().__init__(f"round {round_index} update refused ({reason}): {details}")


@dataclass(frozen=True)
class PushAck:
    """What the fed server answered to an accepted push."""

    attempt: int
    """The attempt this push was sent under."""
    seq: int
    """Order of acceptance in its round (1 = first); 0 when counted_before."""
    replayed: bool = False
    """The server had accepted this very key already (a retry after a lost reply)."""
    counted_before: bool = False
    """The round already counted this client under an earlier attempt (the
    server said "duplicate"): this attempt's bytes are not what counts."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a client starts after its Join (resume_point)."""

    start_round: int
    """First round to train; the loop installs the global adapter of the round
    before it first."""
    restore_optimizer: bool
    """Load the saved optimizer state: it is of the round being resumed."""
    why: str
    """"fresh", "repush", "pull" or "rejoin", for the log."""
    repush: bool = False
    """Before anything else, push the saved update of round start_round - 1
    again (its exact bytes, under its saved attempt)."""


def resume_point(saved: Any, current_round: int) -> ResumePoint:
    """What a (re)started client does, from its saved state (a ClientSnapshot,
    or anything with round and pushed; None: nothing saved) and the current
    round its Join returned.

    - nothing saved: train the current round (a fresh client, as always);
    - round r not pushed, current r: push the saved update of r again under
      its saved attempt a (the server answers "replayed" if it had accepted
      a, and accepts it now otherwise), then go on as below. Training r
      again would send the main server a whole extra round of steps (which
      train its adapter), move the data stream on, and start from optimizer
      state saved after r on the global adapter of r-1;
    - round r pushed, current r: wait for r's global adapter, then train r+1;
    - any other current round: rejoin there with the current global adapter
      (the saved optimizer state belongs to an adapter the run left behind).
    """
    if saved is None:
        return ResumePoint(current_round, False, "fresh")
    if saved.round == current_round and not saved.pushed:
        return ResumePoint(current_round + 1, True, "repush", repush=True)
    if saved.round == current_round:
        return ResumePoint(current_round + 1, True, "pull")
    return ResumePoint(current_round, False, "rejoin")


@dataclass(frozen=True)
class StepReply:
    loss: float
    num_tokens: int
    grad: torch.Tensor | None
    server_compute_s: float
    downlink_bps: float = 0.0
    """The rate the main server paced this reply's gradient at: what the step's
    request asked for, bit/s (0 = not paced: the downlink is unshaped)."""


class MainServerLink(Protocol):
    def send_step(
        self,
        round_index: int,
        step: int,
        train: bool,
        activations: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        initial_adapter: bool = False,
    ) -> int:
        """Send one step's tensors (paced by the uplink); returns bytes sent.
        `initial_adapter` (eval only) asks for the server adapter before training."""

    def receive_reply(self, round_index: int, step: int) -> tuple[StepReply, int]:
        """Block for the reply to the last step; returns it and the bytes received."""


class GlobalPull(Protocol):
    """A pull of the global adapter whose wait is over: the transfer has begun."""

    def read(self) -> tuple[int, bytes | None]:
        """The rest of the transfer: (round the adapter is from, blob or None)."""


class FedServerLink(Protocol):
    def join(self, num_samples: int) -> tuple[int, int]:
        """Returns (current round, number of rounds)."""

    def push_adapter(self, round_index: int, blob: bytes, attempt: int = 0) -> PushAck:
        """Push the update of (this client, round, attempt); returns once the fed
        server counts it. Raises StragglerError when the round went on without
        this client, anything else for a real failure."""

    def pull_global(self, round_index: int) -> GlobalPull:
        """Blocks until the fed server starts sending the global adapter of round
        `round_index` or a later one (the wait for the round to close); the returned
        pull then carries the transfer."""


class RoundPlan(Protocol):
    """Where the number of local iterations of a round comes from (fixed or controller)."""

    def local_steps(self, round_index: int) -> int: ...


@dataclass(frozen=True)
class FixedPlan:
    num_local_steps: int

    def local_steps(self, round_index: int) -> int:
        return self.num_local_steps


@dataclass
class ClientTrainer:
    client_id: int
    part: torch.nn.Module
    """The client sub-network wrapped by peft (only LoRA parameters trainable)."""
    optimizer: torch.optim.Optimizer
    batches: Iterator[Batch]
    main: MainServerLink
    fed: FedServerLink
    tracer: Tracer
    to_bytes: Callable[[torch.nn.Module], bytes]
    from_bytes: Callable[[bytes, torch.nn.Module], dict[str, torch.Tensor]]
    load_state: Callable[[torch.nn.Module, dict[str, torch.Tensor]], None]
    compute: Callable[[float, str], Any]
    """Device pacing: `compute(flops, label)` returns a context manager around a
    compute step that yields its StepRecord (or None when not emulated)."""
    flops_forward: float = 0.0
    flops_backward: float = 0.0
    eval_every: int = 1
    """Evaluate after every this many rounds (and after the last)."""
    loaded_round: int = -2
    """Round whose global adapter is installed (-2 = none yet)."""
    store: Any = None
    """fedsllm.state.ClientStore (None: nothing saved, nothing resumed)."""
    batches_consumed: int = 0
    """Training batches taken from `batches` so far (saved, so a restarted
    client continues its data stream)."""

    # ------------------------------------------------------------- one iteration
    def local_iteration(self, round_index: int, step: int) -> float:
        batch = next(self.batches)
        self.batches_consumed += 1
        tr = self.tracer

        # 1. client forward
        with (
            tr.span("client_forward", round=round_index, step=step) as span,
            self.compute(self.flops_forward, "client_forward") as device,
        ):
            span.extra["device"] = device  # filled in when the step ends
            self.part.train()
            hidden = self.part(batch.input_ids, batch.attention_mask)

        # 2. uplink: smashed activations + labels
        with tr.span("uplink", round=round_index, step=step) as span:
            span.bytes = self.main.send_step(
                round_index, step, True, hidden.detach(), batch.attention_mask, batch.labels
            )

        # 3 + 4. server compute, then downlink of the activation gradient
        with tr.span("wait_reply", round=round_index, step=step) as span:
            reply, num_bytes = self.main.receive_reply(round_index, step)
            span.bytes = num_bytes
            span.extra = {
                "server_compute_s": reply.server_compute_s,
                "downlink_bps": reply.downlink_bps,
            }
        if reply.grad is None:
            raise RuntimeError(f"round {round_index} step {step}: train reply has no gradient")

        # 5. client backward + LoRA step
        with (
            tr.span("client_backward", round=round_index, step=step) as span,
            self.compute(self.flops_backward, "client_backward") as device,
        ):
            span.extra["device"] = device  # filled in when the step ends
            self.optimizer.zero_grad(set_to_none=True)
            hidden.backward(reply.grad.to(hidden.dtype))
            self.optimizer.step()

        tr.event(
            "train_loss", round=round_index, step=step, loss=reply.loss, num_tokens=reply.num_tokens
        )
        return reply.loss

    # ------------------------------------------------------------- warm-up
    def warm_up(self) -> None:
        """One untimed forward, backward and optimizer step on the first batch, all
        undone: the batch goes back in front of the stream, the LoRA weights and
        the optimizer state are restored. A client's first step otherwise pays,
        inside round 0's measured window, for what only the first one does (the
        autograd engine's threads, the optimizer's first-call paths and state,
        the pages a forked client copies on first touch): at K = 100 on 2 cores
        those land on every client at once and overran round 0. Untraced; the
        RNG state is restored too (LoRA dropout draws in the forward)."""
        rng = torch.get_rng_state()
        batch = next(self.batches)
        self.batches = itertools.chain([batch], self.batches)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        weights = [p.detach().clone() for p in params]
        state = copy.deepcopy(self.optimizer.state_dict())
        self.part.train()
        hidden = self.part(batch.input_ids, batch.attention_mask)
        self.optimizer.zero_grad(set_to_none=True)
        hidden.backward(torch.zeros_like(hidden))
        self.optimizer.step()
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
        self.optimizer.load_state_dict(state)
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)

    # ------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self, val: TokenDataset, batch_size: int, num_batches: int, round_index: int
    ) -> float:
        """Token-weighted mean validation loss of the current global model."""
        self.part.eval()
        total_loss = 0.0
        total_tokens = 0
        with self.tracer.span("eval", round=round_index):
            for i in range(num_batches):
                lo = (i * batch_size) % len(val)
                sl = slice(lo, min(lo + batch_size, len(val)))
                ids, mask, labels = val.input_ids[sl], val.attention_mask[sl], val.labels[sl]
                hidden = self.part(ids, mask)
                self.main.send_step(
                    max(round_index, 0),
                    i,
                    False,
                    hidden,
                    mask,
                    labels,
                    initial_adapter=round_index < 0,
                )
                reply, _ = self.main.receive_reply(max(round_index, 0), i)
                total_loss += reply.loss * reply.num_tokens
                total_tokens += reply.num_tokens
        loss = total_loss / max(total_tokens, 1)
        self.tracer.event("val_loss", round=round_index, loss=loss)
        return loss

    # ------------------------------------------------------------- rounds
    def load_global(self, round_index: int) -> int:
        """Install the global adapter of `round_index` (-1 = initial) or of a later
        round, when the run has moved on; returns the round it came from."""
        if self.loaded_round >= round_index:
            return self.loaded_round
        # Two spans: the wait for the round to close (the slowest client's upload and
        # the aggregation) is not download time; global_download is the transfer only.
        with self.tracer.span("wait_global", round=round_index):
            pull = self.fed.pull_global(round_index)
        with self.tracer.span("global_download", round=round_index + 1) as span:
            done, blob = pull.read()
            span.bytes = len(blob) if blob else 0
        if blob is not None:
            self.load_state(self.part, self.from_bytes(blob, self.part))
        self.loaded_round = max(done, round_index)
        return self.loaded_round

    # ------------------------------------------------------------- state
    def save(self, round_index: int, blob: bytes, *, attempt: int) -> None:
        """Checkpoint the round's update, the optimizer and the data position,
        not yet pushed (mark_pushed says so once it was)."""
        if self.store is None:
            return
        from fedsllm.state.optim import optimizer_to_bytes

        self.store.save(
            round_index,
            blob,
            optimizer_to_bytes(self.optimizer.state_dict()),
            pushed=False,
            attempt=attempt,
            extra={"batches": self.batches_consumed},
        )

    def mark_pushed(self, round_index: int, attempt: int) -> None:
        """Mark the round's checkpoint (saved by push() before it sent the update)
        as pushed: one small document, not the adapter and optimizer again."""
        if self.store is not None:
            self.store.mark_pushed(round_index, attempt)

    def skip_batches(self, num_batches: int) -> None:
        """Continue the data stream after `num_batches` (those a saved run used)."""
        self.batches = itertools.islice(self.batches, num_batches, None)
        self.batches_consumed = num_batches

    def resume(self, saved: Any, current_round: int) -> ResumePoint:
        """Apply resume_point's decision: the optimizer state when it is of the
        round being resumed. (The data position is restored before the warm-up;
        the saved adapter never needs loading: every case installs a global one.)"""
        point = resume_point(saved, current_round)
        if point.restore_optimizer and saved.optimizer is not None:
            from fedsllm.state.optim import optimizer_from_bytes

            self.optimizer.load_state_dict(optimizer_from_bytes(saved.optimizer))
        if saved is not None:
            log.info(
                "client %d: saved round %d (%s, attempt %d), current %d: %s, from round %d",
                self.client_id,
                saved.round,
                "pushed" if saved.pushed else "not pushed",
                saved.attempt,
                current_round,
                point.why,
                point.start_round,
            )
        return point

    # ------------------------------------------------------------- rounds
    def push(self, round_index: int, attempt: int = 0) -> bool:
        """Checkpoint, push, mark pushed: True when the update counts, False when
        the round went on without it (a straggler; the next pull catches up)."""
        blob = self.to_bytes(self.part)
        self.save(round_index, blob, attempt=attempt)
        return self._send(round_index, blob, attempt)

    def repush(self, saved: Any) -> bool:
        """Push a saved, unpushed update again: the very bytes push() saved before
        it sent them, under the same attempt, so the fed server either replays
        its earlier acceptance or accepts them now; then marked pushed."""
        return self._send(saved.round, saved.adapter, saved.attempt)

    def _send(self, round_index: int, blob: bytes, attempt: int) -> bool:
        """Push `blob` as (this client, round_index, attempt); then mark its
        checkpoint pushed (accepted or refused as a straggler: never pushed again)."""
        try:
            with self.tracer.span("adapter_upload", round=round_index) as span:
                span.bytes = len(blob)
                ack = self.fed.push_adapter(round_index, blob, attempt)
        except StragglerError as err:
            # Past the round's deadline: the fed server aggregated without this
            # update. Not an error of the run; the next pull catches up.
            self.mark_pushed(round_index, attempt)
            self.tracer.event("straggler", round=round_index, reason=str(err))
            log.warning("client %d: round %d update refused: %s", self.client_id, round_index, err)
            return False
        self.mark_pushed(round_index, attempt)
        # What the server told this client it counts: the soak benchmark checks
        # every such key against the rounds' records (nothing lost).
        self.tracer.event(
            "push_accepted",
            round=round_index,
            attempt=ack.attempt,
            seq=ack.seq,
            replayed=ack.replayed,
            counted_before=ack.counted_before,
        )
        return True

    def run(
        self, num_samples: int, plan: RoundPlan, evaluate: Callable[[int], float] | None
    ) -> None:
        saved = self.store.load() if self.store is not None else None
        if saved is not None:
            self.skip_batches(int(saved.extra.get("batches", 0)))
        self.warm_up()  # before joining: outside every measured round
        current, num_rounds = self.fed.join(num_samples)
        log.info("client %d joined at round %d of %d", self.client_id, current, num_rounds)
        point = self.resume(saved, current)
        if point.repush:
            self.repush(saved)
        round_index = point.start_round
        while round_index < num_rounds:
            done = self.load_global(round_index - 1)
            if done >= round_index:
                # A straggler whose rounds went on without it skips to the current one.
                log.warning(
                    "client %d: rounds %d..%d finished without it; resuming at %d",
                    self.client_id,
                    round_index,
                    done,
                    done + 1,
                )
                round_index = done + 1
                continue
            if evaluate is not None and round_index == point.start_round:
                evaluate(round_index - 1)  # loss before this client's first round
            num_steps = plan.local_steps(round_index)
            losses = [self.local_iteration(round_index, s) for s in range(num_steps)]
            log.info(
                "round %d: %d steps, mean loss %.4f",
                round_index,
                num_steps,
                sum(losses) / len(losses),
            )
            if not self.push(round_index):
                round_index += 1
                continue
            last = round_index == num_rounds - 1
            if evaluate is not None and (last or (round_index + 1) % self.eval_every == 0):
                self.load_global(round_index)
                evaluate(round_index)
            round_index += 1
        if evaluate is None:
            self.load_global(num_rounds - 1)
