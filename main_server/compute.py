"""Server-side forward, loss, backward and LoRA step, behind a queue of steps.

The gRPC handlers (main_server/service.py) only receive and validate a step;
they put it on a `StepQueue` and wait for its result. One `StepWorker` takes
the queued steps and computes them, so receiving never waits for computing
and no handler thread holds a lock around the model.

A worker is anything with `run(jobs) -> results`: today `LocalWorker`, one
thread of this process on the CPU; the next capability puts a torch.distributed
rank or a GPU behind the same interface (the queue hands it a list of jobs,
it hands back one result per job, in order). Nothing here knows gRPC.

Server update modes (docs/MODEL.md section 1, training.server_update):

- `per_batch` (the default): one optimizer step per client batch, in the
  order batches reach the queue. Batches are never fused, since each one must
  see the adapter the step before it left.
- `wave`: the gradients of `wave_size` batches are averaged into one step.
  The worker fuses the train batches queued when it wakes (at most what the
  open wave still needs, and at most `max_fused`, training.max_wave_batches:
  on a CPU a pass of many batches costs more per batch than a small one)
  into one forward and one backward: the batches are
  right-padded to one length, and each batch's loss is its own token mean, so
  the update equals the same batches run one by one (to float tolerance).
  The wave never waits for stragglers: it spans as many worker passes as it
  takes. A wave left partial (the end of a round, the end of the run, a
  client that stopped) is applied as the mean of the batches it holds when a
  batch of a later round arrives, when the adapter is read (evaluation,
  export), or on `flush()`.

Exactly once per (client, round, step): a client re-sends the step whose
reply it did not get (client/remote.py: a broken stream, a restarted main
server), and the first copy may well have been applied already. The trainer
keeps, per client, the latest train step it applied and its result
(`AppliedStep`); a job with that key and the same tensors is answered from it
without computing (`admit_step` has the rules), and the record is part of
the trainer's exported state, so a checkpoint says exactly which steps it
holds.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsllm.data.dataset import IGNORE_INDEX
from fedsllm.errors import StateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerStepResult:
    loss: float
    """Mean token cross-entropy of the batch."""
    num_tokens: int
    """Tokens that counted in the loss (labels != IGNORE_INDEX, after the shift)."""
    grad_hidden: torch.Tensor | None
    """d loss / d activations, same shape as the activations; None in eval."""
    compute_s: float
    """Wall seconds the worker spent on the pass that computed this batch
    (forward + backward + step; a fused wave pass counts once per batch)."""
    queue_s: float = 0.0
    """Wall seconds the step waited in the queue before the worker took it."""
    num_fused: int = 1
    """Batches computed in the same forward and backward as this one."""
    replayed: bool = False
    """A re-sent step answered from its first computation (nothing applied again)."""


@dataclass
class StepJob:
    """One client's step, as a handler puts it on the queue."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    mode: str = "train"
    """"train" or "eval"."""
    round: int = 0
    initial_adapter: bool = False
    """Eval only: evaluate the adapter as it was before training."""
    client_id: int = -1
    step: int | None = None
    """Train: the step within its round. With `client_id` and `digest` it keys
    the job, which the trainer then applies at most once (admit_step); None:
    not keyed, applied on every submit (direct callers, tests)."""
    digest: str | Future[str] = ""
    """A hash of the step's tensors (main_server.service.step_digest), or its
    future while a thread computes it: a re-send carries the very same bytes,
    a new step under an old key does not. Read through digest_value."""
    enqueued_s: float = field(default_factory=time.perf_counter)
    future: Future[ServerStepResult] = field(default_factory=Future)


@dataclass(frozen=True)
class AppliedStep:
    """A client's latest applied train step and the result it was answered
    with: a re-send of it gets this result, not a second update."""

    round: int
    step: int
    digest: str | Future[str]
    result: ServerStepResult

    @property
    def key(self) -> tuple[int, int]:
        return (self.round, self.step)


class StaleStepError(StateError):
    """A keyed train step that a client following the protocol never sends: a
    key older than the one last applied for it (not the first step of that
    round), or that key with other tensors. A violation, not a retry: the
    stream ends with FAILED_PRECONDITION and nothing is applied."""

    def __init__(self, client_id: int, key: tuple[int, int], last: tuple[int, int], why: str):
        self.client_id = client_id
        self.key = key
        self.last = last
        super().__init__(
            f"client {client_id}: train step (round {key[0]}, step {key[1]}) refused: {why} "
            f"(last applied: round {last[0]}, step {last[1]})"
        )


def digest_value(digest: str | Future[str]) -> str:
    """A step digest, waiting for it if it is still being computed (a
    millisecond or two after the step was queued)."""
    return digest if isinstance(digest, str) else digest.result()


def admit_step(last: AppliedStep | None, job: StepJob) -> bool:
    """True: compute and apply the keyed `job`; False: it re-sends `last`, whose
    result answers it. Raises StaleStepError for anything else.

    Keys (round, step) of one client go forward, with one exception: step 0
    of the round last applied. That is a client restarted from its own
    checkpoint, training its round again from the start under a new push
    attempt (client/loop.py resume_point); the steps its lost attempt had
    applied stay applied (nothing can take them back), the new ones apply
    once each. Same key, same tensors: a re-send (a broken stream, a
    restarted main server)."""
    if last is None or job.step is None:
        return True
    key = (job.round, job.step)
    if key == last.key and digest_value(job.digest) == digest_value(last.digest):
        return False
    if key > last.key:
        return True
    if job.step == 0 and job.round == last.round:
        return True
    why = "the same key with other tensors" if key == last.key else "older than the last"
    raise StaleStepError(job.client_id, key, last.key, why)


_PENDING = ServerStepResult(float("nan"), 0, None, 0.0)
"""Inside ServerTrainer.train_jobs: the result of a step not computed yet."""


class ServerTrainer:
    """The server adapter, its optimizer and the update rule. Not thread-safe:
    exactly one worker calls it (the queue guarantees this)."""

    def __init__(
        self,
        server_part: torch.nn.Module,
        *,
        lr: float,
        update: str = "per_batch",
        wave_size: int = 1,
        max_fused: int = 0,
    ) -> None:
        self.part = server_part
        self.params = [p for p in server_part.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        self.update = update
        self.wave_size = max(1, wave_size)
        self.max_fused = max_fused if max_fused > 0 else self.wave_size
        """Wave mode: most batches one forward and backward takes
        (training.max_wave_batches); more are computed in several passes."""
        self._batches_in_wave = 0
        self._wave_round = -1
        self.num_updates = 0
        self.num_partial_waves = 0
        """Waves applied before they held wave_size batches."""
        self.num_steps = 0
        """Train batches computed (a fused pass of n counts n)."""
        self.last_round = -1
        """Round of the latest train batch (-1: none yet)."""
        self._initial = [p.detach().clone() for p in self.params]
        """The adapter before any update, for "before training" evaluations."""
        self.applied: dict[int, AppliedStep] = {}
        """Per client, its latest keyed train step applied (train_jobs): one
        gradient each, so at most num_clients of them are held (and saved)."""

    # ------------------------------------------------------------ train
    def train_step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> ServerStepResult:
        """One batch (a fused pass of one)."""
        return self.train_steps([(hidden, attention_mask, labels)])[0]

    def train_steps(
        self,
        batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        round_index: int = 0,
    ) -> list[ServerStepResult]:
        """Forward and backward of `batches` in one pass; per_batch takes exactly one.

        Wave mode: the batches join the open wave (a batch of a later round
        first closes a partial one); the wave steps once it holds wave_size.
        More than `max_fused` batches are computed in passes of at most
        `max_fused` (the gradients add up to the same wave)."""
        if self.update == "per_batch" and len(batches) != 1:
            raise ValueError(f"per_batch computes one batch per pass, got {len(batches)}")
        if len(batches) > self.max_fused:
            passes: list[ServerStepResult] = []
            for lo in range(0, len(batches), self.max_fused):
                passes += self.train_steps(batches[lo : lo + self.max_fused], round_index)
            return passes
        if self.update == "wave":
            if self._batches_in_wave and round_index != self._wave_round:
                self.flush()
            if self._batches_in_wave + len(batches) > self.wave_size:
                raise ValueError(
                    f"{len(batches)} batches overflow the wave "
                    f"({self._batches_in_wave}/{self.wave_size} held)"
                )
            self._wave_round = round_index
        t0 = time.perf_counter()
        self.part.train()
        if self.update == "per_batch" or self._batches_in_wave == 0:
            self.optimizer.zero_grad(set_to_none=True)
        inputs = [h.detach().requires_grad_(True) for h, _, _ in batches]
        hidden, mask, labels = _pad_and_stack(inputs, batches)
        logits, _ = self.part(hidden, mask, None)
        scale = 1.0 if self.update == "per_batch" else 1.0 / self.wave_size
        losses = []
        row = 0
        for _, _, y in batches:
            num_rows, seq = y.shape
            losses.append(_causal_lm_loss(logits[row : row + num_rows, :seq].contiguous(), y))
            row += num_rows
        (torch.stack(losses).sum() * scale).backward()
        self._batches_in_wave += len(batches)
        self.num_steps += len(batches)
        self.last_round = max(self.last_round, round_index)
        if self.update == "per_batch" or self._batches_in_wave >= self.wave_size:
            self.optimizer.step()
            self._batches_in_wave = 0
            self.num_updates += 1
        compute_s = time.perf_counter() - t0
        results = []
        for x, (_, _, y), loss in zip(inputs, batches, losses, strict=True):
            grad = x.grad
            if grad is None:  # pragma: no cover - the server part always depends on its input
                raise RuntimeError("server part did not propagate a gradient to its input")
            # The client sees its own batch's gradient, unscaled.
            grad = grad / scale if scale != 1.0 else grad
            results.append(
                ServerStepResult(
                    float(loss.detach()), num_loss_tokens(y), grad, compute_s, 0.0, len(batches)
                )
            )
        return results

    def train_jobs(self, jobs: list[StepJob]) -> list[ServerStepResult | StateError]:
        """Train jobs of one round, keyed ones applied at most once each: a
        re-send gets its first result (replayed=True), even when both copies
        are in this list; a stale one gets its StaleStepError instead of a
        result. The rest are computed in one pass (train_steps)."""
        last = dict(self.applied)
        pending: dict[int, int] = {}
        """Client -> index in `fresh` of its new job in this list (then
        last[client] is that job's key, its result not computed yet)."""
        fresh: list[StepJob] = []
        plan: list[tuple[int, bool] | AppliedStep | StateError] = []
        """Per job: (index in `fresh`, replayed), the applied step it re-sends,
        or its refusal."""
        for job in jobs:
            previous = last.get(job.client_id) if job.step is not None else None
            try:
                new = admit_step(previous, job)
            except StaleStepError as err:
                plan.append(err)
                continue
            if not new:
                assert previous is not None
                index = pending.get(job.client_id)
                plan.append(previous if index is None else (index, True))
                continue
            plan.append((len(fresh), False))
            if job.step is not None:
                last[job.client_id] = AppliedStep(job.round, job.step, job.digest, _PENDING)
                pending[job.client_id] = len(fresh)
            fresh.append(job)
        computed = (
            self.train_steps(
                [(j.hidden, j.attention_mask, j.labels) for j in fresh], fresh[0].round
            )
            if fresh
            else []
        )
        for job, result in zip(fresh, computed, strict=True):
            if job.step is not None:
                self.applied[job.client_id] = AppliedStep(job.round, job.step, job.digest, result)
        results: list[ServerStepResult | StateError] = []
        for item in plan:
            if isinstance(item, tuple):
                index, replayed = item
                result = computed[index]
                results.append(dataclasses.replace(result, replayed=True) if replayed else result)
            elif isinstance(item, AppliedStep):
                results.append(dataclasses.replace(item.result, replayed=True))
            else:
                results.append(item)
        return results

    def flush(self) -> bool:
        """Apply a partial wave as the mean of the batches it holds; True if one was."""
        if self.update != "wave" or self._batches_in_wave == 0:
            return False
        # The gradients were scaled by 1/wave_size; rescale to 1/held.
        factor = self.wave_size / self._batches_in_wave
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(factor)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._batches_in_wave = 0
        self.num_updates += 1
        self.num_partial_waves += 1
        return True

    @property
    def pending_in_wave(self) -> int:
        return self._batches_in_wave

    # ------------------------------------------------------------ eval
    @torch.no_grad()
    def eval_step(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        initial_adapter: bool = False,
    ) -> ServerStepResult:
        """Loss without an update; `initial_adapter` evaluates the adapter as it was
        before training (swapped in, and back). A partial wave is applied first."""
        self.flush()
        t0 = time.perf_counter()
        self.part.eval()
        saved = None
        if initial_adapter:
            saved = [p.detach().clone() for p in self.params]
            for p, init in zip(self.params, self._initial, strict=True):
                p.copy_(init)
        try:
            _, loss = self.part(hidden, attention_mask, labels)
        finally:
            if saved is not None:
                for p, value in zip(self.params, saved, strict=True):
                    p.copy_(value)
        compute_s = time.perf_counter() - t0
        return ServerStepResult(float(loss), num_loss_tokens(labels), None, compute_s)

    # ------------------------------------------------------------ checkpoint
    def export_state(self) -> TrainerState:
        """Everything a restarted server needs to continue exactly here.

        A partial wave is persisted, not flushed: its summed gradients and
        how many batches it holds go into the state, so a checkpoint taken
        mid-wave (the periodic one) changes no update, and a restored trainer
        given the rest of the wave applies the same step the original would
        have. The steps applied (`applied`: per client its latest key and
        result) go with it, so a restored trainer answers a re-send of a step
        this state holds from its saved result, and computes any later one.
        Call it through the queue (`StepQueue.call`): not thread-safe."""
        from fedsllm.model.lora import state_to_bytes
        from fedsllm.state.optim import optimizer_to_bytes

        wave = None
        if self._batches_in_wave:
            wave = state_to_bytes(
                {str(i): p.grad for i, p in enumerate(self.params) if p.grad is not None}
            )
        applied = {str(c): a for c, a in sorted(self.applied.items())}
        replies = None
        if applied:
            replies = state_to_bytes({c: _grad_of(a) for c, a in applied.items()})
        return TrainerState(
            adapter=state_to_bytes(dict(self._named_params())),
            optimizer=optimizer_to_bytes(self.optimizer.state_dict()),
            wave=wave,
            num_steps=self.num_steps,
            num_updates=self.num_updates,
            num_partial_waves=self.num_partial_waves,
            last_round=self.last_round,
            batches_in_wave=self._batches_in_wave,
            wave_round=self._wave_round,
            update=self.update,
            wave_size=self.wave_size,
            applied={c: _applied_to_doc(a) for c, a in applied.items()},
            replies=replies,
        )

    def restore_state(self, state: TrainerState) -> None:
        """Put this trainer exactly where `export_state` left one built the same way.

        Checks everything before it changes anything: the update mode and
        wave size, every adapter tensor's name, shape and dtype, and the
        applied steps against their gradients; a mismatch raises StateError
        naming it and leaves the trainer as it was."""
        from fedsllm.model.lora import bytes_to_state
        from fedsllm.state.optim import optimizer_from_bytes

        if (state.update, state.wave_size) != (self.update, self.wave_size):
            raise StateError(
                f"checkpoint of server_update={state.update!r} wave_size={state.wave_size}, "
                f"this server runs {self.update!r} wave_size={self.wave_size}"
            )
        params = dict(self._named_params())
        adapter = bytes_to_state(state.adapter, "adapter")
        _check_like(adapter, params, "adapter")
        grads = bytes_to_state(state.wave, "wave") if state.wave is not None else {}
        by_index = {str(i): p for i, p in enumerate(self.params)}
        _check_like(grads, by_index, "wave", partial=True)
        applied = _applied_from_state(state)
        try:  # load_state_dict checks the groups before it changes anything
            self.optimizer.load_state_dict(optimizer_from_bytes(state.optimizer))
        except ValueError as err:
            raise StateError(f"checkpoint optimizer does not fit this model: {err}") from None
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(adapter[name])
        for key, p in by_index.items():
            p.grad = grads[key].clone() if key in grads else None
        self.num_steps = state.num_steps
        self.num_updates = state.num_updates
        self.num_partial_waves = state.num_partial_waves
        self.last_round = state.last_round
        self._batches_in_wave = state.batches_in_wave
        self._wave_round = state.wave_round
        self.applied = applied

    def _named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The trainable parameters (the server adapter), in optimizer order."""
        return [(n, p) for n, p in self.part.named_parameters() if p.requires_grad]

    def adapter_bytes(self, to_bytes: Any) -> bytes:
        """Serialize the adapter, a partial wave applied first. Call it through the
        queue (`StepQueue.call`) while a worker runs, so no update is half-applied."""
        self.flush()
        return to_bytes(self.part)


@dataclass(frozen=True)
class TrainerState:
    """A ServerTrainer's whole state (ServerTrainer.export_state); the main
    server keeps it in its MainServerStore (main_server/__main__.py)."""

    adapter: bytes
    """safetensors of the trainable parameters, by parameter name."""
    optimizer: bytes
    """fedsllm.state.optim.optimizer_to_bytes of the optimizer's state dict."""
    wave: bytes | None
    """Wave mode, a partial wave held: safetensors of the summed gradients by
    parameter index (None: no wave open)."""
    num_steps: int
    num_updates: int
    num_partial_waves: int
    last_round: int
    batches_in_wave: int
    wave_round: int
    update: str
    wave_size: int
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per client (its id as a string): the latest train step applied, its key,
    tensor digest and result fields (JSON-able; the gradient is in `replies`)."""
    replies: bytes | None = None
    """safetensors of those steps' gradients, by client id (None: no step yet)."""

    def counters(self) -> dict[str, Any]:
        """The JSON-able fields, as the store keeps them."""
        return {
            "num_partial_waves": self.num_partial_waves,
            "batches_in_wave": self.batches_in_wave,
            "wave_round": self.wave_round,
            "update": self.update,
            "wave_size": self.wave_size,
        }


def _grad_of(applied: AppliedStep) -> torch.Tensor:
    grad = applied.result.grad_hidden
    if grad is None:  # pragma: no cover - a train result always has a gradient
        raise RuntimeError(f"applied step {applied.key} has no gradient")
    return grad


def _applied_to_doc(applied: AppliedStep) -> dict[str, Any]:
    r = applied.result
    return {
        "round": applied.round,
        "step": applied.step,
        "digest": digest_value(applied.digest),
        "loss": r.loss,
        "num_tokens": r.num_tokens,
        "compute_s": r.compute_s,
        "num_fused": r.num_fused,
    }


def _applied_from_state(state: TrainerState) -> dict[int, AppliedStep]:
    """The applied steps a TrainerState holds; StateError when its documents and
    its gradients do not match."""
    from fedsllm.model.lora import bytes_to_state

    grads = bytes_to_state(state.replies, "replies") if state.replies is not None else {}
    if set(grads) != set(state.applied):
        raise StateError(
            f"checkpoint replies do not match its applied steps: gradients of clients "
            f"{sorted(grads)[:5]}, steps of {sorted(state.applied)[:5]}"
        )
    applied = {}
    for client, doc in state.applied.items():
        try:
            result = ServerStepResult(
                float(doc["loss"]),
                int(doc["num_tokens"]),
                grads[client],
                float(doc["compute_s"]),
                0.0,
                int(doc["num_fused"]),
            )
            applied[int(client)] = AppliedStep(
                int(doc["round"]), int(doc["step"]), str(doc["digest"]), result
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"checkpoint applied step of client {client!r}: {err!r}") from None
    return applied


def _check_like(
    got: dict[str, torch.Tensor],
    want: dict[str, torch.Tensor],
    field_name: str,
    partial: bool = False,
) -> None:
    """StateError unless `got` has `want`'s names (a subset when `partial`),
    shapes and dtypes."""
    unknown = sorted(set(got) - set(want))
    missing = [] if partial else sorted(set(want) - set(got))
    if unknown or missing:
        raise StateError(
            f"checkpoint {field_name} does not fit this model: "
            f"unknown {unknown[:3]}, missing {missing[:3]}"
        )
    for name, value in got.items():
        ref = want[name]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise StateError(
                f"checkpoint {field_name}[{name}] does not fit this model: "
                f"{tuple(value.shape)} {value.dtype}, the model's is {tuple(ref.shape)} {ref.dtype}"
            )


def _pad_and_stack(
    inputs: list[torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (sum B, max T, D) batch: right padding with mask 0 changes no real
    position (causal attention, positions from the mask)."""
    if len(inputs) == 1:
        return inputs[0], batches[0][1], batches[0][2]
    seq = max(h.shape[1] for h in inputs)
    hidden, mask, labels = [], [], []
    for x, (_, m, y) in zip(inputs, batches, strict=True):
        pad = seq - x.shape[1]
        hidden.append(torch.nn.functional.pad(x, (0, 0, 0, pad)))
        mask.append(torch.nn.functional.pad(m, (0, pad), value=0))
        labels.append(torch.nn.functional.pad(y, (0, pad), value=IGNORE_INDEX))
    return torch.cat(hidden), torch.cat(mask), torch.cat(labels)


def _causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' ForCausalLMLoss (shift inside, -100 ignored, token mean), as
    ServerPart.forward computes it, on one batch's rows of a fused pass."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])


def num_loss_tokens(labels: torch.Tensor) -> int:
    """Tokens the shifted causal-LM loss counts (labels after the first != ignore)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


# ---------------------------------------------------------------- queue and workers
class StepWorker(ABC):
    """Computes a list of queued jobs and returns one result per job, in order
    (or the job's refusal: a StaleStepError, which fails that job alone).

    The queue calls `run` from one thread at a time. `max_fused` says how many
    train jobs one call may take. Today's worker is `LocalWorker`; a
    torch.distributed rank or a device is another subclass."""

    @abstractmethod
    def max_fused(self) -> int: ...

    @abstractmethod
    def run(self, jobs: list[StepJob]) -> list[ServerStepResult | StateError]: ...

    def call(self, fn: Any) -> Any:
        """Run `fn(trainer-like state)` between jobs (adapter export)."""
        raise NotImplementedError


class LocalWorker(StepWorker):
    """Computes on this process's CPU (or its one device) with a ServerTrainer."""

    def __init__(self, trainer: ServerTrainer) -> None:
        self.trainer = trainer

    def max_fused(self) -> int:
        if self.trainer.update == "per_batch":
            return 1
        left = self.trainer.wave_size - self.trainer.pending_in_wave
        return min(left, self.trainer.max_fused)

    def run(self, jobs: list[StepJob]) -> list[ServerStepResult | StateError]:
        if jobs[0].mode == "eval":
            (job,) = jobs
            return [
                self.trainer.eval_step(
                    job.hidden, job.attention_mask, job.labels, job.initial_adapter
                )
            ]
        return self.trainer.train_jobs(jobs)

    def call(self, fn: Any) -> Any:
        return fn(self.trainer)


class StepQueue:
    """Handlers `submit` steps; one thread feeds them to the worker.

    Train jobs of one round are fused up to `worker.max_fused()`; an eval job,
    a job of another round and a `call` are taken alone, in arrival order.
    Nothing caps how many handlers may wait here."""

    def __init__(self, worker: StepWorker) -> None:
        self.worker = worker
        self._jobs: queue.Queue[StepJob | _Call | None] = queue.Queue()
        self._held: StepJob | _Call | None = None
        self._thread = threading.Thread(target=self._loop, name="step-worker", daemon=True)
        self._started = False
        self._refusing = False
        self._start_lock = threading.Lock()
        """Guards starting the worker and the switch to refusing steps."""
        self.num_passes = 0
        self.num_steps = 0
        self.busy_s = 0.0
        """Wall seconds the worker spent computing (steps / busy_s = steps/s)."""
        self.max_depth = 0
        """Most jobs seen waiting at once (queue depth at a pass)."""
        self.on_new_round: Callable[[Any], None] | None = None
        """Called on the worker thread with the trainer before the first train
        pass of a round later than every round seen so far (not the first one
        after a start): main_server/__main__.py checkpoints there, so a
        checkpoint holds every step of the rounds before, without waiting for
        a poll of the fed server that a fast round outruns."""
        self._round_seen = -1

    def submit(self, job: StepJob) -> Future[ServerStepResult]:
        """Queue a step; once `refuse_steps` was called its future fails at once."""
        self._ensure_started()
        with self._start_lock:
            if self._refusing:
                job.future.set_exception(StepQueueStopped("the main server is stopping"))
                return job.future
            self._jobs.put(job)
        return job.future

    def call(self, fn: Any, timeout_s: float | None = None) -> Any:
        """Run fn(trainer) on the worker thread between passes and return its value;
        TimeoutError when the worker has not run it within `timeout_s` (None: wait)."""
        self._ensure_started()
        item = _Call(fn)
        self._jobs.put(item)
        return item.future.result(timeout=timeout_s)

    def refuse_steps(self) -> int:
        """Stop taking steps (a stopping server): queued steps that the worker has
        not started fail with StepQueueStopped, and so does every later submit;
        `call` still works (the last checkpoint). Returns how many were dropped.
        A step dropped here changed nothing; its client re-sends it to the
        restarted server."""
        dropped = 0
        kept: list[StepJob | _Call | None] = []
        with self._start_lock:
            self._refusing = True
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, StepJob):
                    item.future.set_exception(StepQueueStopped("the main server is stopping"))
                    dropped += 1
                else:
                    kept.append(item)
            for item in kept:
                self._jobs.put(item)
        return dropped

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse steps, let the worker finish its pass and end; wait at most
        `timeout_s` for it (the thread is a daemon: a worker stuck in a step
        does not keep the process alive)."""
        if self._started:
            self.refuse_steps()
            self._jobs.put(None)
            self._thread.join(timeout=timeout_s)

    def _ensure_started(self) -> None:
        with self._start_lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def _next(self) -> StepJob | _Call | None:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self._jobs.get()

    def _loop(self) -> None:
        while True:
            first = self._next()
            if first is None:
                return
            if isinstance(first, _Call):
                _settle(first.future, lambda f=first: self.worker.call(f.fn))
                continue
            jobs = [first]
            if first.mode == "train":
                limit = self.worker.max_fused()
                while len(jobs) < limit:
                    try:
                        item = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if (
                        isinstance(item, StepJob)
                        and item.mode == "train"
                        and item.round == first.round
                    ):
                        jobs.append(item)
                    else:
                        self._held = item
                        break
            self.max_depth = max(self.max_depth, len(jobs) + self._jobs.qsize())
            if first.mode == "train" and first.round > self._round_seen:
                if self._round_seen >= 0 and self.on_new_round is not None:
                    try:
                        self.worker.call(self.on_new_round)
                    except Exception:  # a failed checkpoint must not stop training
                        log.exception("checkpoint before round %d failed", first.round)
                self._round_seen = first.round
            started = time.perf_counter()
            try:
                results = self.worker.run(jobs)
            except BaseException as err:  # handed to every waiting handler
                for job in jobs:
                    job.future.set_exception(err)
                continue
            self.busy_s += time.perf_counter() - started
            self.num_passes += 1
            self.num_steps += len(jobs)
            for job, result in zip(jobs, results, strict=True):
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                    continue
                job.future.set_result(
                    dataclasses.replace(result, queue_s=max(0.0, started - job.enqueued_s))
                )


class StepQueueStopped(RuntimeError):
    """The queue refuses steps: the main server is stopping (StepQueue.refuse_steps)."""


@dataclass
class _Call:
    fn: Any
    future: Future[Any] = field(default_factory=Future)


def _settle(future: Future[Any], fn: Any) -> None:
    try:
        future.set_result(fn())
    except BaseException as err:
        future.set_exception(err)
