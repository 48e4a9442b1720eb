"""A restarted client resumes from its ClientStore (client/loop.py): the
decision as a pure function over (saved round, pushed, attempt) and the
current round, and the loop that saves and acts on it, with in-memory links
and an in-memory store."""

from __future__ import annotations

import itertools

import pytest
import safetensors.torch
import torch

from client.loop import ResumePoint, StragglerError, resume_point
from fedsllm.state import ClientSnapshot, open_store
from fedsllm.state.format import tensor_digest
from fedsllm.state.optim import optimizer_to_bytes

from .test_loop import FakeFed, _batches
from .test_loop import _trainer as _json_trainer

ADAPTER = safetensors.torch.save({"w": torch.zeros(4, 4)})


def _trainer(tmp_path, fed=None):
    """test_loop's trainer with a safetensors adapter, as a ClientStore keeps."""
    trainer, main, fed = _json_trainer(tmp_path, fed=fed)
    trainer.to_bytes = lambda p: safetensors.torch.save({"w": p.lora.weight.detach().clone()})
    trainer.from_bytes = lambda blob, p: safetensors.torch.load(blob)
    return trainer, main, fed


def _saved(round_index: int, pushed: bool, attempt: int) -> ClientSnapshot:
    return ClientSnapshot(round_index, b"", None, pushed, attempt, {}, 1)


@pytest.mark.parametrize(
    ("saved", "current", "expected"),
    [
        # nothing saved: a fresh client, as before
        (None, 0, ResumePoint(0, False, "fresh")),
        (None, 4, ResumePoint(4, False, "fresh")),
        # died before its push was answered, round still open: push the saved
        # update again (same bytes, same attempt), then on as if it was pushed
        (_saved(3, False, 0), 3, ResumePoint(4, True, "repush", repush=True)),
        (_saved(3, False, 2), 3, ResumePoint(4, True, "repush", repush=True)),
        # pushed, round still open: wait for its global adapter, then the next round
        (_saved(3, True, 0), 3, ResumePoint(4, True, "pull")),
        (_saved(3, True, 1), 3, ResumePoint(4, True, "pull")),
        # the run went on: rejoin at the current round, the old optimizer state is stale
        (_saved(3, False, 0), 5, ResumePoint(5, False, "rejoin")),
        (_saved(3, True, 0), 4, ResumePoint(4, False, "rejoin")),
        (_saved(-1, True, 0), 0, ResumePoint(0, False, "rejoin")),
        # the fed server is behind this client's store: it decides
        (_saved(6, True, 0), 2, ResumePoint(2, False, "rejoin")),
    ],
)
def test_resume_point(saved, current, expected) -> None:
    assert resume_point(saved, current) == expected


class ResumingFed(FakeFed):
    """A fed server whose Join says the run is at `current` of `num_rounds`."""

    def __init__(self, current: int, num_rounds: int, straggle: set[int] = frozenset()) -> None:
        super().__init__()
        self.current = current
        self.num_rounds = num_rounds
        self.straggle = straggle
        self.sent: list[bytes] = []
        """Every pushed blob, in order."""

    def join(self, num_samples):
        return self.current, self.num_rounds

    def push_adapter(self, round_index, blob, attempt=0):
        self.sent.append(blob)
        ack = super().push_adapter(round_index, blob, attempt)
        if round_index in self.straggle:
            raise StragglerError(round_index, "late")
        return ack


def _momentum(trainer) -> None:
    trainer.optimizer = torch.optim.SGD(trainer.part.lora.parameters(), lr=0.5, momentum=0.9)


def test_a_fresh_run_saves_each_round_pushed(tmp_path) -> None:
    store = open_store("client")
    trainer, _, fed = _trainer(tmp_path, fed=ResumingFed(0, 2))
    trainer.store = store
    trainer.run(10, _plan(3), None)
    saved = store.load()
    assert fed.pushed == [0, 1] and fed.attempts == [0, 0]
    assert (saved.round, saved.pushed, saved.attempt) == (1, True, 0)
    assert saved.extra["batches"] == 6 == trainer.batches_consumed
    assert saved.optimizer is not None


class CountingStore:
    """A ClientStore that counts its full saves and its pushed marks."""

    def __init__(self) -> None:
        self.store = open_store("client")
        self.calls: list[tuple[str, int]] = []

    def save(self, round_index, *args, **kwargs):
        self.calls.append(("save", round_index))
        return self.store.save(round_index, *args, **kwargs)

    def mark_pushed(self, round_index, attempt):
        self.calls.append(("mark_pushed", round_index))
        return self.store.mark_pushed(round_index, attempt)

    def load(self):
        return self.store.load()


@pytest.mark.parametrize("straggle", [frozenset(), frozenset({1})])
def test_a_round_writes_its_update_once_and_then_only_marks_it_pushed(tmp_path, straggle) -> None:
    """The adapter and optimizer are written once per round, before the push
    (the write-ahead a restart re-pushes from); after the push, accepted or
    refused as a straggler, only the mark. Each write is on the round's path."""
    store = CountingStore()
    trainer, _, fed = _trainer(tmp_path, fed=ResumingFed(0, 2, straggle=straggle))
    trainer.store = store
    trainer.run(10, _plan(3), None)
    assert store.calls == [("save", 0), ("mark_pushed", 0), ("save", 1), ("mark_pushed", 1)]
    saved = store.load()
    assert (saved.round, saved.pushed, saved.attempt) == (1, True, 0)
    assert tensor_digest(saved.adapter) == tensor_digest(fed.sent[-1])  # the tensors pushed


def _plan(n: int):
    from client.loop import FixedPlan

    return FixedPlan(n)


def test_unpushed_round_is_pushed_again_not_trained_again(tmp_path) -> None:
    """A client that died in round 1's push re-pushes the exact bytes it saved,
    under the same attempt, and runs no step of round 1: the main server sees
    round 2 only, the data stream goes on from the saved position, and round 2
    trains with the optimizer state saved after round 1."""
    store = open_store("client")
    # What a client that died in round 1's push left: 2 rounds x 2 steps consumed.
    old, _, _ = _trainer(tmp_path / "old")
    _momentum(old)
    old.local_iteration(0, 0)  # gives the optimizer a momentum buffer
    moments = optimizer_to_bytes(old.optimizer.state_dict())
    buffer = old.optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    store.save(1, ADAPTER, moments, pushed=False, attempt=2, extra={"batches": 4})
    kept = store.load().adapter  # the store's copy: ADAPTER with its format stamp

    trainer, main, fed = _trainer(tmp_path, fed=ResumingFed(1, 3))
    _momentum(trainer)
    trainer.store = store
    first: list[torch.Tensor] = []
    trainer.batches = _recording(trainer.batches, first)
    buffers: list[torch.Tensor] = []
    step = trainer.local_iteration

    def record_momentum(round_index: int, s: int) -> float:
        if not buffers:  # the optimizer state the first step starts from
            buffers.append(trainer.optimizer.state_dict()["state"][0]["momentum_buffer"].clone())
        return step(round_index, s)

    trainer.local_iteration = record_momentum
    trainer.run(10, _plan(2), None)

    assert fed.pushed == [1, 2] and fed.attempts == [2, 0]
    # The saved bytes, not a new update (the same tensors as the first push's:
    # the fed server's digest ignores the store's stamp).
    assert fed.sent[0] == kept and tensor_digest(kept) == tensor_digest(ADAPTER)
    assert {r for r, _, _ in main.calls} == {2}  # no step of round 1 again
    assert fed.pulled[0] == 1  # round 2 starts from the global adapter of round 1
    assert torch.equal(buffers[0], buffer)
    # The data stream continues after the 4 batches the old run used: the source
    # is read past them (6 = 4 skipped + 1 round x 2 steps; the warm-up's batch
    # goes back in front), and the first one trained on is batch 4.
    assert len(first) == 6
    assert torch.equal(first[4], next(itertools.islice(_batches(), 4, None)).input_ids)
    assert trainer.batches_consumed == 4 + 2
    saved = store.load()
    assert (saved.round, saved.pushed, saved.attempt) == (2, True, 0)


def test_a_repush_refused_as_late_goes_on_like_a_pushed_round(tmp_path) -> None:
    store = open_store("client")
    store.save(1, ADAPTER, None, pushed=False, attempt=0, extra={"batches": 4})
    store_copy = store.load().adapter
    trainer, main, fed = _trainer(tmp_path, fed=ResumingFed(1, 3, straggle={1}))
    trainer.store = store
    trainer.run(10, _plan(2), None)
    assert fed.pushed == [1, 2] and fed.sent[0] == store_copy
    assert {r for r, _, _ in main.calls} == {2}
    assert fed.pulled[0] == 1


def _recording(batches, seen: list[torch.Tensor]):
    for batch in batches:
        seen.append(batch.input_ids)
        yield batch


def test_optimizer_state_is_restored_for_the_round_being_resumed(tmp_path) -> None:
    store = open_store("client")
    old, _, _ = _trainer(tmp_path / "old")
    _momentum(old)
    old.local_iteration(0, 0)
    buffer = old.optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    store.save(2, ADAPTER, optimizer_to_bytes(old.optimizer.state_dict()), pushed=True, attempt=0)

    resumed, _, _ = _trainer(tmp_path / "resumed")
    _momentum(resumed)
    resumed.resume(store.load(), 2)
    assert torch.equal(resumed.optimizer.state_dict()["state"][0]["momentum_buffer"], buffer)

    later, _, _ = _trainer(tmp_path / "later")
    _momentum(later)
    later.resume(store.load(), 5)  # the run went on: a fresh optimizer
    assert later.optimizer.state_dict()["state"] == {}


def test_pushed_round_goes_straight_to_its_global(tmp_path) -> None:
    store = open_store("client")
    store.save(1, ADAPTER, None, pushed=True, attempt=0, extra={"batches": 4})
    trainer, main, fed = _trainer(tmp_path, fed=ResumingFed(1, 3))
    trainer.store = store
    trainer.run(10, _plan(2), None)
    assert fed.pushed == [2]  # round 1 is not trained again
    assert fed.pulled[0] == 1 and {r for r, _, _ in main.calls} == {2}


def test_a_refused_round_is_saved_as_done(tmp_path) -> None:
    store = open_store("client")
    trainer, _, fed = _trainer(tmp_path, fed=ResumingFed(0, 2, straggle={0}))
    trainer.store = store
    trainer.run(10, _plan(1), None)
    assert fed.pushed == [0, 1]
    saved = store.load()
    assert (saved.round, saved.pushed) == (1, True)
