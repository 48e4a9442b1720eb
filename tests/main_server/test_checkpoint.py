"""The main server's state survives a restart: ServerTrainer exports and
restores its whole state bit-exactly (adapter, optimizer, counters, a partial
wave), a restored trainer trains exactly like the original, and
main_server.__main__'s LocalCheckpoints writes and restores it through a
MainServerStore on disk, refusing a checkpoint of another scenario."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from fedsllm.config import load_scenario
from fedsllm.data.dataset import IGNORE_INDEX
from fedsllm.errors import StateError
from fedsllm.roles import build_part
from fedsllm.state import open_store
from fedsllm.state.optim import optimizer_from_bytes
from main_server.__main__ import LocalCheckpoints
from main_server.compute import LocalWorker, ServerTrainer, StepJob, StepQueue

D = 64


@pytest.fixture(scope="module")
def part() -> torch.nn.Module:
    scenario = load_scenario(overrides=["model.pretrain_steps=0", "data.seq_len=16"])
    server_part, _, cfg = build_part(scenario, "server")
    assert cfg.hidden_size == D
    return server_part


def make_batch(seed: int, rows: int = 2, seq: int = 12) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, seq, D, generator=g)
    labels = torch.randint(0, 100, (rows, seq), generator=g)
    mask = torch.ones(rows, seq, dtype=torch.int64)
    mask[:, -2:] = 0
    labels[:, -2:] = IGNORE_INDEX
    return hidden, mask, labels


def trainer_for(part: torch.nn.Module, update: str = "per_batch", wave: int = 1) -> ServerTrainer:
    return ServerTrainer(copy.deepcopy(part), lr=1e-2, update=update, wave_size=wave)


def params(trainer: ServerTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def assert_bit_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def assert_optimizer_equal(a: ServerTrainer, b: ServerTrainer) -> None:
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]
    for key in sa["state"]:
        fa, fb = sa["state"][key], sb["state"][key]
        assert fa.keys() == fb.keys()
        for name in fa:
            assert torch.equal(fa[name], fb[name]), (key, name)
    ga = [{k: v for k, v in g.items() if k != "params"} for g in sa["param_groups"]]
    gb = [{k: v for k, v in g.items() if k != "params"} for g in sb["param_groups"]]
    assert [{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()} for g in ga] == [
        {k: tuple(v) if isinstance(v, list) else v for k, v in g.items()} for g in gb
    ]


# (update, wave size, batches before the checkpoint): per_batch; a wave
# checkpointed between waves; a wave checkpointed while it holds 2 of 3 batches.
CASES = [("per_batch", 1, 3), ("wave", 2, 4), ("wave", 3, 5)]


@pytest.mark.parametrize(("update", "wave", "before"), CASES)
def test_export_restore_round_trip_is_bit_exact(
    part: torch.nn.Module, update: str, wave: int, before: int
) -> None:
    original = trainer_for(part, update, wave)
    for i in range(before):
        original.train_steps([make_batch(i)], round_index=i // 3)
    state = original.export_state()
    restored = trainer_for(part, update, wave)
    restored.restore_state(state)
    assert_bit_equal(params(restored), params(original))
    assert_optimizer_equal(restored, original)
    for name in ("num_steps", "num_updates", "num_partial_waves", "last_round", "pending_in_wave"):
        assert getattr(restored, name) == getattr(original, name), name
    assert restored.num_steps == before
    if original.pending_in_wave:  # gradients matter only while a wave is open
        held = [p.grad for p in original.params]
        assert [g is None for g in held] == [p.grad is None for p in restored.params]
        assert_bit_equal(
            [g for g in held if g is not None],
            [p.grad for p in restored.params if p.grad is not None],
        )
    # Exporting the restored trainer gives the same bytes back.
    assert restored.export_state() == state
    assert optimizer_from_bytes(state.optimizer)["state"]  # AdamW moments are in it


@pytest.mark.parametrize(("update", "wave", "before"), CASES)
def test_a_restored_trainer_trains_exactly_like_the_original(
    part: torch.nn.Module, update: str, wave: int, before: int
) -> None:
    original = trainer_for(part, update, wave)
    for i in range(before):
        original.train_steps([make_batch(i)], round_index=0)
    restored = trainer_for(part, update, wave)
    restored.restore_state(original.export_state())
    after = [make_batch(100 + i) for i in range(3)]
    for batch in after:
        a = original.train_steps([batch], round_index=0)[0]
        b = restored.train_steps([batch], round_index=0)[0]
        assert a.loss == b.loss
        assert torch.equal(a.grad_hidden, b.grad_hidden)
    assert original.num_updates == restored.num_updates
    assert_bit_equal(params(restored), params(original))
    assert_optimizer_equal(restored, original)
    # Without the restore the adapter differs: the comparison can fail.
    fresh = trainer_for(part, update, wave)
    for batch in after:
        fresh.train_steps([batch], round_index=0)
    assert any(not torch.equal(x, y) for x, y in zip(params(fresh), params(original), strict=True))


def test_a_partial_wave_is_persisted_not_flushed(part: torch.nn.Module) -> None:
    """A checkpoint mid-wave applies no update: the wave completes after the restore
    exactly as it would have without the checkpoint."""
    original = trainer_for(part, "wave", 3)
    original.train_steps([make_batch(1), make_batch(2)], round_index=0)
    state = original.export_state()
    assert state.batches_in_wave == 2 and state.wave is not None
    assert original.num_updates == 0 and original.pending_in_wave == 2


def test_restore_refuses_a_state_of_another_trainer(part: torch.nn.Module) -> None:
    wave = trainer_for(part, "wave", 3)
    wave.train_steps([make_batch(1)], round_index=0)
    other = trainer_for(part, "per_batch", 1)
    before = params(other)
    with pytest.raises(StateError, match="server_update='wave'"):
        other.restore_state(wave.export_state())
    assert_bit_equal(params(other), before)
    assert other.num_steps == 0
    # An adapter of another model (names, shapes) is refused before anything changes.
    import dataclasses

    from fedsllm.model.lora import state_to_bytes

    trained = trainer_for(part, "per_batch", 1)
    trained.train_step(*make_batch(1))
    state = trained.export_state()
    name, first = trained._named_params()[0]
    reshaped = dict(trained._named_params()) | {name: first[:1]}
    for foreign in ({"not.a.param": first}, {name: first}, reshaped):
        with pytest.raises(StateError, match="does not fit"):
            other.restore_state(dataclasses.replace(state, adapter=state_to_bytes(dict(foreign))))
    assert_bit_equal(params(other), before)
    assert other.optimizer.state_dict()["state"] == {}


def _train(steps: StepQueue, seeds: list[int]) -> None:
    for seed in seeds:
        hidden, mask, labels = make_batch(seed)
        steps.submit(StepJob(hidden, mask, labels, round=0)).result(timeout=60)


@pytest.mark.parametrize(("update", "wave", "updates"), [("per_batch", 1, 4), ("wave", 3, 1)])
def test_a_second_instance_resumes_from_the_first_ones_checkpoint(
    part: torch.nn.Module,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    update: str,
    wave: int,
    updates: int,
) -> None:
    """Four steps, then a checkpoint on disk (in wave mode one batch is left in
    the open wave); a new instance restores it and continues identically."""
    state_dir = tmp_path / "state"
    first_trainer = trainer_for(part, update, wave)
    first = StepQueue(LocalWorker(first_trainer))
    saver = LocalCheckpoints(open_store("main_server", state_dir), first, "hash-a")  # type: ignore[arg-type]
    assert saver.restore() is None  # nothing yet: a fresh start
    _train(first, [1, 2, 3, 4])
    assert saver.save("exit") == 1
    first.close()

    second_trainer = trainer_for(part, update, wave)
    second = StepQueue(LocalWorker(second_trainer))
    resumer = LocalCheckpoints(open_store("main_server", state_dir), second, "hash-a")  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="main_server"):
        snap = resumer.restore()
    assert snap is not None and snap.seq == 1
    assert f"resumed from checkpoint 1: {updates} updates, 4 steps" in caplog.text
    assert (snap.wave is not None) == (update == "wave")
    assert_bit_equal(params(second_trainer), params(first_trainer))
    assert_optimizer_equal(second_trainer, first_trainer)
    # Both continue identically (in wave mode: the open wave completes).
    _train(second, [5, 6])
    first_trainer.train_step(*make_batch(5))
    first_trainer.train_step(*make_batch(6))
    assert second_trainer.num_updates == first_trainer.num_updates
    assert_bit_equal(params(second_trainer), params(first_trainer))
    assert resumer.save("exit") == 2
    second.close()

    # A checkpoint of another scenario is refused, and changes nothing.
    third_trainer = trainer_for(part)
    third = StepQueue(LocalWorker(third_trainer))
    foreign = LocalCheckpoints(open_store("main_server", state_dir), third, "hash-b")  # type: ignore[arg-type]
    with pytest.raises(StateError, match="hash-a"):
        foreign.restore()
    assert third_trainer.num_steps == 0
    third.close()


def test_periodic_checkpoint_only_after_steps_and_the_interval(
    part: torch.nn.Module, tmp_path: Path
) -> None:
    now = [0.0]
    steps = StepQueue(LocalWorker(trainer_for(part)))
    store = open_store("main_server", tmp_path / "state")
    saver = LocalCheckpoints(store, steps, "h", every_s=10.0, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 11.0
    saver.tick()
    assert store.load() is None  # no step happened: nothing to save
    _train(steps, [1])
    now[0] = 15.0
    saver.tick()
    assert store.load() is None  # too soon after the last look
    now[0] = 21.5
    saver.tick()
    snap = store.load()
    assert snap is not None and snap.num_steps == 1
    now[0] = 40.0
    saver.tick()
    assert store.load().seq == 1  # type: ignore[union-attr]  # no new step
    steps.close()
