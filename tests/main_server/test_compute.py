"""The main server's step queue and update modes, without gRPC: wave mode fuses
queued batches into one forward and backward and gives the same server-adapter
update as the same batches run one by one; partial waves (a round that ends, the
end of the run, a client that stopped) are applied as the mean of what they hold;
stragglers never hold a pass; per_batch never fuses."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from fedsllm.config import load_scenario
from fedsllm.data.dataset import IGNORE_INDEX
from fedsllm.roles import build_part
from main_server.compute import LocalWorker, ServerTrainer, StepJob, StepQueue

D = 64
ATOL = 1e-5
"""Float tolerance: AdamW normalizes the step, so tiny gradients differ most."""


@pytest.fixture(scope="module")
def part() -> torch.nn.Module:
    scenario = load_scenario(overrides=["model.pretrain_steps=0", "data.seq_len=16"])
    server_part, _, cfg = build_part(scenario, "server")
    assert cfg.hidden_size == D
    return server_part


def make_batch(seed: int, rows: int, seq: int, pad: int = 0) -> tuple[torch.Tensor, ...]:
    """A client batch of `rows` x `seq`, its last `pad` positions padding."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, seq, D, generator=g)
    labels = torch.randint(0, 100, (rows, seq), generator=g)
    mask = torch.ones(rows, seq, dtype=torch.int64)
    if pad:
        mask[:, seq - pad :] = 0
        labels[:, seq - pad :] = IGNORE_INDEX
    return hidden, mask, labels


BATCHES = [make_batch(1, 2, 16), make_batch(2, 3, 12, pad=2), make_batch(3, 1, 9)]


def trainer_for(part: torch.nn.Module, update: str, wave_size: int) -> ServerTrainer:
    return ServerTrainer(copy.deepcopy(part), lr=1e-2, update=update, wave_size=wave_size)


def adapter(trainer: ServerTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=ATOL, rtol=1e-5)


def test_fused_wave_equals_one_by_one(part: torch.nn.Module) -> None:
    one = trainer_for(part, "wave", 3)
    one_results = [one.train_step(*b) for b in BATCHES]
    fused = trainer_for(part, "wave", 3)
    fused_results = fused.train_steps(list(BATCHES))
    assert one.num_updates == fused.num_updates == 1
    before = adapter(trainer_for(part, "wave", 3))
    assert any((x - y).abs().max() > 1e-4 for x, y in zip(adapter(one), before, strict=True))
    assert_same(adapter(one), adapter(fused))
    for a, b in zip(one_results, fused_results, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.num_tokens == b.num_tokens
        assert b.grad_hidden.shape == a.grad_hidden.shape
        torch.testing.assert_close(a.grad_hidden, b.grad_hidden, atol=ATOL, rtol=1e-4)
    assert fused_results[0].num_fused == 3


def test_per_batch_never_fuses(part: torch.nn.Module) -> None:
    trainer = trainer_for(part, "per_batch", 3)
    with pytest.raises(ValueError, match="one batch per pass"):
        trainer.train_steps(list(BATCHES[:2]))
    assert LocalWorker(trainer).max_fused() == 1


def test_partial_wave_at_round_end_is_the_mean_of_what_it_holds(part: torch.nn.Module) -> None:
    # Wave of 3, but round 0 only brings 2 batches (a client stopped): the
    # first batch of round 1 applies round 0's partial wave first.
    partial = trainer_for(part, "wave", 3)
    partial.train_steps(list(BATCHES[:2]), round_index=0)
    assert partial.num_updates == 0
    partial.train_steps([BATCHES[2]], round_index=1)
    assert partial.num_updates == 1 and partial.num_partial_waves == 1
    # The same two batches as a full wave of 2.
    full = trainer_for(part, "wave", 2)
    full.train_steps(list(BATCHES[:2]))
    assert_same(adapter(partial), adapter(full))


def test_end_of_run_flushes_the_partial_wave(part: torch.nn.Module) -> None:
    trainer = trainer_for(part, "wave", 3)
    trainer.train_steps([BATCHES[0]])
    exported = trainer.adapter_bytes(lambda p: adapter(trainer))
    full = trainer_for(part, "wave", 1)
    full.train_step(*BATCHES[0])
    assert_same(exported, adapter(full))
    assert trainer.flush() is False  # nothing left to apply


def test_queue_fuses_what_is_queued_and_waits_for_no_straggler(part: torch.nn.Module) -> None:
    trainer = trainer_for(part, "wave", 3)
    gate, entered = threading.Event(), threading.Event()

    class GatedWorker(LocalWorker):
        def run(self, jobs: list[StepJob]) -> list:
            entered.set()
            gate.wait(10)
            return super().run(jobs)

    steps = StepQueue(GatedWorker(trainer))
    # The first job occupies the worker; two more queue up behind it and are fused.
    first = steps.submit(StepJob(*BATCHES[0]))
    assert entered.wait(10)
    second = steps.submit(StepJob(*BATCHES[1]))
    third = steps.submit(StepJob(*BATCHES[2]))
    gate.set()
    results = [f.result(10) for f in (first, second, third)]
    assert [r.num_fused for r in results] == [1, 2, 2]
    assert steps.num_passes == 2 and steps.num_steps == 3
    assert trainer.num_updates == 1
    reference = trainer_for(part, "wave", 3)
    reference.train_steps(list(BATCHES))
    assert_same(adapter(trainer), adapter(reference))
    # A straggler's batch two rounds on: the stale partial wave never blocked it.
    straggler = steps.submit(StepJob(*BATCHES[0], round=2)).result(10)
    assert straggler.num_fused == 1
    assert steps.call(lambda t: t.pending_in_wave) == 1
    steps.close()


def test_queue_per_batch_runs_in_arrival_order(part: torch.nn.Module) -> None:
    trainer = trainer_for(part, "per_batch", 1)
    steps = StepQueue(LocalWorker(trainer))
    futures = [steps.submit(StepJob(*b)) for b in BATCHES]
    assert all(f.result(10).num_fused == 1 for f in futures)
    reference = trainer_for(part, "per_batch", 1)
    for b in BATCHES:
        reference.train_step(*b)
    assert_same(adapter(trainer), adapter(reference))
    assert trainer.num_updates == 3
    steps.close()


def test_eval_through_the_queue_sees_a_consistent_adapter(part: torch.nn.Module) -> None:
    trainer = trainer_for(part, "wave", 2)
    steps = StepQueue(LocalWorker(trainer))
    steps.submit(StepJob(*BATCHES[0])).result(10)
    result = steps.submit(StepJob(*BATCHES[1], mode="eval")).result(10)
    assert result.grad_hidden is None
    assert trainer.num_partial_waves == 1  # eval applied the half wave first
    steps.close()


def test_a_wave_larger_than_the_cap_is_split_and_equals_one_by_one(
    part: torch.nn.Module,
) -> None:
    # Five batches, at most two per pass: passes of 2, 2, 1 into one wave of 5.
    batches = [*BATCHES, make_batch(4, 2, 16), make_batch(5, 1, 14, pad=3)]
    one = trainer_for(part, "wave", 5)
    for b in batches:
        one.train_steps([b])
    capped = ServerTrainer(copy.deepcopy(part), lr=1e-2, update="wave", wave_size=5, max_fused=2)
    results = capped.train_steps(batches)
    assert [r.num_fused for r in results] == [2, 2, 2, 2, 1]
    assert capped.num_updates == one.num_updates == 1
    assert_same(adapter(capped), adapter(one))
    # The queue hands the worker at most the cap.
    worker = LocalWorker(
        ServerTrainer(copy.deepcopy(part), lr=1e-2, update="wave", wave_size=5, max_fused=2)
    )
    assert worker.max_fused() == 2
    worker.trainer.train_steps(batches[:4])
    assert worker.max_fused() == 1  # what the open wave still needs


def test_queue_calls_on_new_round_on_the_worker_before_a_later_rounds_first_step(
    part: torch.nn.Module,
) -> None:
    """The main server checkpoints there: the trainer it is handed holds every
    step of the rounds before, and no step of the new one, whatever the timing.
    Not before the first round after a start (nothing to save), not for an
    eval step, not again for the same round or an older one (a straggler)."""
    trainer = ServerTrainer(part, lr=0.05)
    steps = StepQueue(LocalWorker(trainer))
    seen: list[tuple[int, str]] = []
    steps.on_new_round = lambda t: seen.append((t.num_steps, threading.current_thread().name))
    steps.submit(StepJob(*BATCHES[0], round=0)).result(10)
    steps.submit(StepJob(*BATCHES[1], round=0)).result(10)
    assert seen == []
    steps.submit(StepJob(*BATCHES[2], round=1)).result(10)
    assert seen == [(2, "step-worker")]
    steps.submit(StepJob(*BATCHES[0], round=0)).result(10)  # a straggler's step
    steps.submit(StepJob(*BATCHES[1], round=1, mode="eval")).result(10)
    steps.submit(StepJob(*BATCHES[2], round=1)).result(10)
    assert seen == [(2, "step-worker")]
    steps.submit(StepJob(*BATCHES[0], round=2)).result(10)
    assert seen == [(2, "step-worker"), (5, "step-worker")]
    steps.close()
