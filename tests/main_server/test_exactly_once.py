"""A train step is applied at most once per (client, round, step) on the main
server: a client re-sends the step whose reply it did not get (its Train
stream broke, the main server restarted), and the first copy was applied
already. The re-send is answered with the first computation's reply (the
same gradient bytes) and changes nothing; after a restart the checkpoint says
which steps it holds; a key that goes back is refused with a status; in wave
mode the re-sent batch counts once toward the wave.

Every server here is a real gRPC server on port 0 (or the step queue alone)
with a tiny model; the reference is a ServerTrainer given each step once."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from client.remote import MainServerStream
from fedsllm.config import load_scenario
from fedsllm.errors import StateError
from fedsllm.roles import build_part
from fedsllm.state import open_store
from main_server.__main__ import LocalCheckpoints
from main_server.compute import (
    AppliedStep,
    LocalWorker,
    ServerStepResult,
    ServerTrainer,
    StaleStepError,
    StepJob,
    StepQueue,
    admit_step,
)
from tests.main_server.service_kit import serving as kit_serving

HASH = "h"
B, T, D = 2, 16, 64
WAIT_S = 60.0
"""Bound on waits for a thread or a future (never reached when things work)."""


@pytest.fixture(scope="module")
def part() -> torch.nn.Module:
    scenario = load_scenario(overrides=["model.pretrain_steps=0", "data.seq_len=16"])
    server_part, _, cfg = build_part(scenario, "server")
    assert cfg.hidden_size == D
    return server_part


def tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T, dtype=torch.int64)
    labels = torch.randint(3, 259, (B, T), generator=g)
    return hidden, mask, labels


def trainer_for(part: torch.nn.Module, update: str = "per_batch", wave: int = 1) -> ServerTrainer:
    return ServerTrainer(copy.deepcopy(part), lr=1e-2, update=update, wave_size=wave)


def assert_same_state(a: ServerTrainer, b: ServerTrainer) -> None:
    """Bit-equal adapters and optimizer states, the same step and update counts."""
    for x, y in zip(a.params, b.params, strict=True):
        assert torch.equal(x, y)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].keys() == sb[key].keys()
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), (key, name)
    assert (a.num_steps, a.num_updates) == (b.num_steps, b.num_updates)


def grad_bytes(grad: torch.Tensor | None) -> bytes:
    assert grad is not None
    return grad.contiguous().numpy().tobytes()


class HoldFirstStep:
    """The service's `compute` context: the first train step, once computed and
    applied, is held in its handler (before the reply goes out) until `release`."""

    def __init__(self) -> None:
        self.applied = threading.Event()
        self.release = threading.Event()
        self._held = False

    @contextlib.contextmanager
    def __call__(self, _flops: float, _label: str) -> Iterator[None]:
        yield None
        if not self._held:
            self._held = True
            self.applied.set()
            self.release.wait(WAIT_S)


def serving(trainer: ServerTrainer, steps: StepQueue | None = None, **kw: Any):
    """This file's server: two clients, D-wide activations, T tokens."""
    return kit_serving(
        trainer,
        steps,
        hidden_size=D,
        vocab_size=259,
        max_seq_len=T,
        num_clients=2,
        scenario_hash=HASH,
        **kw,
    )


def send(address: str, client: int, round_index: int, step: int, seed: int) -> tuple[Any, bytes]:
    """One train step on a new Train stream; the reply and its gradient bytes."""
    hidden, mask, labels = tensors(seed)
    stream = MainServerStream(address, client, HASH, "float32", chunk_bytes=4096)
    stream.send_step(round_index, step, True, hidden, mask, labels)
    try:
        reply, _ = stream.receive_reply(round_index, step)
    finally:
        stream.close()
    return reply, grad_bytes(reply.grad)


# ===================================================================== re-send
@pytest.mark.parametrize("reply_lost", [True, False], ids=["reply-lost", "reply-received"])
def test_a_resent_step_on_a_new_stream_is_applied_once(
    part: torch.nn.Module, reply_lost: bool
) -> None:
    """The step is applied, then its stream breaks (before the reply went out,
    or after); the client re-sends it on a new stream. The server ends as one
    that got it once, and the client gets the first computation's gradient."""
    reference = trainer_for(part)
    first = reference.train_step(*tensors(1))
    trainer = trainer_for(part)
    gate = HoldFirstStep()
    with serving(trainer, compute=gate) as address:
        if reply_lost:
            hidden, mask, labels = tensors(1)
            stream = MainServerStream(address, 0, HASH, "float32", chunk_bytes=4096)
            stream.send_step(0, 3, True, hidden, mask, labels)
            assert gate.applied.wait(WAIT_S)
            stream.cancel()  # the stream breaks with the step applied, unanswered
            gate.release.set()
        else:
            gate.release.set()
            _, received = send(address, 0, 0, 3, seed=1)
            assert received == grad_bytes(first.grad_hidden)
        reply, resent = send(address, 0, 0, 3, seed=1)
    assert resent == grad_bytes(first.grad_hidden)
    assert (reply.loss, reply.num_tokens) == (first.loss, first.num_tokens)
    assert_same_state(trainer, reference)
    assert trainer.num_steps == 1


def test_the_next_step_after_a_resend_is_applied(part: torch.nn.Module) -> None:
    """A re-send answered from the first computation does not swallow the steps
    after it: each is applied once, as on a server that never saw a re-send."""
    reference = trainer_for(part)
    reference.train_step(*tensors(1))
    second = reference.train_step(*tensors(2))
    trainer = trainer_for(part)
    with serving(trainer) as address:
        send(address, 0, 0, 0, seed=1)
        send(address, 0, 0, 0, seed=1)
        _, received = send(address, 0, 0, 1, seed=2)
    assert received == grad_bytes(second.grad_hidden)
    assert_same_state(trainer, reference)


# ===================================================================== restart
def test_a_restored_server_answers_a_resend_of_a_step_its_checkpoint_holds(
    part: torch.nn.Module, tmp_path: Path
) -> None:
    """Checkpoint after step 1; the server restarts from it; the client re-sends
    step 1: applied once, the same reply. Step 2 (after the checkpoint) is
    computed by the restored server as by the original."""
    state_dir = tmp_path / "state"
    original = trainer_for(part)
    steps = StepQueue(LocalWorker(original))
    with serving(original, steps) as address:
        send(address, 0, 0, 0, seed=1)
        _, first = send(address, 0, 0, 1, seed=2)
        saver = LocalCheckpoints(open_store("main_server", state_dir), steps, HASH)  # type: ignore[arg-type]
        saver.save("test")
    snapshot = open_store("main_server", state_dir).load()
    assert snapshot is not None and snapshot.applied["0"]["step"] == 1  # type: ignore[union-attr]

    restored = trainer_for(part)
    steps = StepQueue(LocalWorker(restored))
    assert LocalCheckpoints(open_store("main_server", state_dir), steps, HASH).restore()  # type: ignore[arg-type]
    with serving(restored, steps) as address:
        reply, resent = send(address, 0, 0, 1, seed=2)
        assert resent == first
        assert_same_state(restored, original)
        _, after = send(address, 0, 0, 2, seed=3)
    expected = original.train_step(*tensors(3))
    assert after == grad_bytes(expected.grad_hidden)
    assert_same_state(restored, original)


def test_a_checkpoint_round_trips_the_applied_steps(part: torch.nn.Module) -> None:
    trainer = trainer_for(part)
    steps = StepQueue(LocalWorker(trainer))
    for client, step in ((0, 4), (1, 2)):
        hidden, mask, labels = tensors(10 + client)
        job = StepJob(
            hidden, mask, labels, round=1, client_id=client, step=step, digest=f"d{client}"
        )
        steps.submit(job).result(timeout=WAIT_S)
    state = steps.call(lambda t: t.export_state())
    steps.close()
    restored = trainer_for(part)
    restored.restore_state(state)
    assert restored.applied.keys() == {0, 1}
    for client in (0, 1):
        a, b = trainer.applied[client], restored.applied[client]
        assert (a.key, a.digest, a.result.loss) == (b.key, b.digest, b.result.loss)
        assert grad_bytes(a.result.grad_hidden) == grad_bytes(b.result.grad_hidden)
    assert restored.export_state() == state
    # Gradients that do not match the steps they answer are refused, nothing changed.
    import dataclasses

    other = trainer_for(part)
    with pytest.raises(StateError, match="replies do not match"):
        other.restore_state(dataclasses.replace(state, replies=None))
    assert other.applied == {} and other.num_steps == 0


# ===================================================================== refused keys
def test_a_key_that_goes_back_is_refused_and_changes_nothing(part: torch.nn.Module) -> None:
    trainer = trainer_for(part)
    with serving(trainer) as address:
        send(address, 0, 1, 2, seed=1)
        reference = trainer_for(part)
        reference.restore_state(trainer.export_state())
        for round_index, step, seed in ((1, 1, 2), (0, 5, 3), (1, 2, 4)):
            with pytest.raises(grpc.RpcError) as info:
                send(address, 0, round_index, step, seed=seed)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"(round {round_index}, step {step}) refused" in info.value.details()
            assert_same_state(trainer, reference)
        # Another client's keys are its own.
        send(address, 1, 0, 0, seed=5)
        assert trainer.num_steps == 2


def test_step_0_of_the_same_round_is_a_client_training_its_round_again(
    part: torch.nn.Module,
) -> None:
    """A client restarted from its own checkpoint trains its unpushed round again
    from step 0 (client/loop.py resume_point "retrain"): that is applied."""
    trainer = trainer_for(part)
    with serving(trainer) as address:
        send(address, 0, 2, 0, seed=1)
        send(address, 0, 2, 1, seed=2)
        send(address, 0, 2, 0, seed=3)
        send(address, 0, 2, 0, seed=4)  # its first step was the one in flight
        assert trainer.num_steps == 4
        send(address, 0, 2, 0, seed=4)  # and a re-send of that is still answered
        assert trainer.num_steps == 4
        send(address, 0, 2, 1, seed=5)
        assert trainer.num_steps == 5


def _last(round_index: int, step: int, digest: str = "x") -> AppliedStep:
    return AppliedStep(round_index, step, digest, ServerStepResult(1.0, 1, None, 0.0))


@pytest.mark.parametrize(
    ("last", "key", "digest", "outcome"),
    [
        (None, (0, 0), "x", "apply"),
        (_last(1, 3), (1, 3), "x", "answer"),
        (_last(1, 3), (1, 4), "x", "apply"),
        (_last(1, 3), (2, 0), "x", "apply"),
        (_last(1, 3), (1, 0), "y", "apply"),  # the round trained again
        (_last(1, 0), (1, 0), "y", "apply"),  # the same, its first step was in flight
        (_last(1, 3), (1, 2), "x", "refuse"),
        (_last(1, 3), (0, 9), "x", "refuse"),
        (_last(1, 3), (0, 0), "x", "refuse"),
        (_last(1, 3), (1, 3), "y", "refuse"),
    ],
)
def test_admit_step_rules(last: AppliedStep | None, key, digest: str, outcome: str) -> None:
    hidden, mask, labels = tensors(0)
    job = StepJob(hidden, mask, labels, round=key[0], client_id=0, step=key[1], digest=digest)
    if outcome == "refuse":
        with pytest.raises(StaleStepError):
            admit_step(last, job)
    else:
        assert admit_step(last, job) == (outcome == "apply")


# ===================================================================== wave mode
@pytest.mark.parametrize("same_pass", [True, False], ids=["same-pass", "later-pass"])
def test_wave_mode_counts_a_resent_batch_once(part: torch.nn.Module, same_pass: bool) -> None:
    """wave_size 2: client 0's step and its re-send, then client 1's step. The
    re-send is not the wave's second batch: the wave steps once client 1's
    batch arrives, as on a server given the two batches once each. Same pass:
    both copies queued when the worker wakes, so they would be fused together."""
    reference = trainer_for(part, "wave", 2)
    first = reference.train_steps([tensors(1)], round_index=0)[0]
    reference.train_steps([tensors(2)], round_index=0)
    trainer = trainer_for(part, "wave", 2)
    steps = StepQueue(LocalWorker(trainer))

    def job(client: int, seed: int) -> StepJob:
        hidden, mask, labels = tensors(seed)
        return StepJob(hidden, mask, labels, round=0, client_id=client, step=0, digest=str(seed))

    if same_pass:
        entered, gate = threading.Event(), threading.Event()

        def hold(_trainer: ServerTrainer) -> None:
            entered.set()
            gate.wait(WAIT_S)

        holder = threading.Thread(target=steps.call, args=(hold,))
        holder.start()
        assert entered.wait(WAIT_S)  # the worker is busy: both copies queue up
        futures = [steps.submit(job(0, 1)), steps.submit(job(0, 1))]
        gate.set()
        holder.join(WAIT_S)
        results = [f.result(timeout=WAIT_S) for f in futures]
    else:
        results = [steps.submit(job(0, 1)).result(timeout=WAIT_S) for _ in range(2)]
    assert [r.replayed for r in results] == [False, True]
    assert {grad_bytes(r.grad_hidden) for r in results} == {grad_bytes(first.grad_hidden)}
    assert trainer.pending_in_wave == 1 and trainer.num_updates == 0
    steps.submit(job(1, 2)).result(timeout=WAIT_S)
    steps.close()
    assert trainer.pending_in_wave == 0
    assert_same_state(trainer, reference)
