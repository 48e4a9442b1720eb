"""The client loop (client/loop.py) without gRPC: in-memory links stand in for the
servers, so the order of the five steps, the round protocol and the trace
records can be checked exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import torch

from client.loop import ClientTrainer, FixedPlan, PushAck, StepReply
from fedsllm.data.dataset import Batch, TokenDataset
from fedsllm.trace import Tracer, read_records


class LinearPart(torch.nn.Module):
    """A stand-in client part: embedding + one trainable linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 4).requires_grad_(False)
        self.lora = torch.nn.Linear(4, 4, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lora(self.emb(input_ids)) * attention_mask[..., None]


class FakeMain:
    """Answers each step with loss = mean(h^2) and its exact gradient."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []
        self.initial_flags: list[bool] = []
        self._last: torch.Tensor | None = None

    def send_step(
        self, round_index, step, train, activations, attention_mask, labels, initial_adapter=False
    ) -> int:
        self.calls.append((round_index, step, train))
        self.initial_flags.append(initial_adapter)
        self._last = activations.detach().clone().requires_grad_(True)
        return activations.numel() * 4

    def receive_reply(self, round_index, step):
        h = self._last
        train = self.calls[-1][2]
        with torch.enable_grad():
            loss = (h**2).mean()
            if train:
                loss.backward()
        grad = h.grad if train else None
        return StepReply(float(loss.detach()), int(h.shape[0] * h.shape[1]), grad, 0.001), 64


class FakePull:
    def __init__(self, result: tuple[int, bytes | None], on_read=None) -> None:
        self.result = result
        self.on_read = on_read

    def read(self):
        if self.on_read is not None:
            self.on_read()
        return self.result


class FakeFed:
    def __init__(self, on_wait=None, on_read=None) -> None:
        self.pushed: list[int] = []
        self.attempts: list[int] = []
        self.pulled: list[int] = []
        self.blobs: dict[int, bytes] = {}
        self.on_wait = on_wait
        """Called while pull_global waits for the round to close (before it returns)."""
        self.on_read = on_read
        """Called while the pull's transfer runs."""

    def join(self, num_samples):
        return 0, 2

    def push_adapter(self, round_index, blob, attempt=0):
        self.pushed.append(round_index)
        self.attempts.append(attempt)
        self.blobs[round_index] = blob
        return PushAck(attempt=attempt, seq=len(self.pushed))

    def pull_global(self, round_index):
        self.pulled.append(round_index)
        if self.on_wait is not None:
            self.on_wait()
        return FakePull((round_index, self.blobs.get(round_index)), self.on_read)


def _batches():
    g = torch.Generator().manual_seed(0)
    while True:
        ids = torch.randint(0, 16, (2, 5), generator=g)
        yield Batch(ids, torch.ones(2, 5, dtype=torch.int64), ids.clone())


def _trainer(
    tmp_path, eval_every: int = 1, fed: FakeFed | None = None, clock=None
) -> tuple[ClientTrainer, FakeMain, FakeFed]:
    torch.manual_seed(0)
    part = LinearPart()
    main, fed = FakeMain(), fed or FakeFed()
    tracer_clock = {} if clock is None else {"clock": clock}

    def to_bytes(p):
        return json.dumps(p.lora.weight.tolist()).encode()

    def from_bytes(blob, p):
        return {"w": torch.tensor(json.loads(blob))}

    def load_state(p, state):
        with torch.no_grad():
            p.lora.weight.copy_(state["w"])

    trainer = ClientTrainer(
        client_id=0,
        part=part,
        optimizer=torch.optim.SGD(part.lora.parameters(), lr=0.5),
        batches=_batches(),
        main=main,
        fed=fed,
        tracer=Tracer(tmp_path / "trace" / "client_0.jsonl", "client", client_id=0, **tracer_clock),
        to_bytes=to_bytes,
        from_bytes=from_bytes,
        load_state=load_state,
        compute=lambda flops, label: contextlib.nullcontext(None),
        eval_every=eval_every,
    )
    return trainer, main, fed


def test_local_iteration_runs_the_five_steps_in_order(tmp_path) -> None:
    trainer, main, _ = _trainer(tmp_path)
    before = trainer.part.lora.weight.clone()
    losses = [trainer.local_iteration(0, s) for s in range(3)]
    trainer.tracer.close()
    assert main.calls == [(0, 0, True), (0, 1, True), (0, 2, True)]
    assert not torch.equal(before, trainer.part.lora.weight)  # the LoRA step happened
    assert losses[-1] < losses[0]  # descending on mean(h^2)
    names = [r["name"] for r in read_records(tmp_path / "trace")]
    step0 = names[: names.index("train_loss") + 1]
    assert step0 == ["client_forward", "uplink", "wait_reply", "client_backward", "train_loss"]


def test_run_pushes_pulls_and_evaluates_per_round(tmp_path) -> None:
    trainer, main, fed = _trainer(tmp_path)
    val = TokenDataset(torch.randint(0, 16, (4, 5)), torch.ones(4, 5, dtype=torch.int64))
    evaluated: list[int] = []

    def evaluate(round_index: int) -> float:
        evaluated.append(round_index)
        return trainer.evaluate(val, batch_size=2, num_batches=2, round_index=round_index)

    trainer.run(num_samples=10, plan=FixedPlan(2), evaluate=evaluate)
    trainer.tracer.close()
    assert fed.pushed == [0, 1]
    assert evaluated == [-1, 0, 1]  # before training, then after every round
    train_calls = [c for c in main.calls if c[2]]
    assert [c[:2] for c in train_calls] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    eval_calls = [i for i, c in enumerate(main.calls) if not c[2]]
    assert len(eval_calls) == 3 * 2
    # Only the evaluation before training asks for the server's initial adapter.
    assert [main.initial_flags[i] for i in eval_calls] == [True, True] + [False] * 4
    # After each round the pushed adapter came back as the global one.
    assert trainer.loaded_round == 1
    records = read_records(tmp_path / "trace")
    assert [r["round"] for r in records if r["name"] == "val_loss"] == [-1, 0, 1]
    # Each accepted push is recorded with the key the server counted.
    acks = [r for r in records if r["name"] == "push_accepted"]
    assert [(r["round"], r["extra"]["attempt"], r["extra"]["seq"]) for r in acks] == [
        (0, 0, 1),
        (1, 0, 2),
    ]


def test_eval_every_skips_rounds_but_not_the_last(tmp_path) -> None:
    trainer, _, _ = _trainer(tmp_path, eval_every=5)
    evaluated: list[int] = []
    trainer.run(num_samples=10, plan=FixedPlan(1), evaluate=lambda r: evaluated.append(r) or 0.0)
    assert evaluated == [-1, 1]


def test_waiting_for_the_round_to_close_is_its_own_span(tmp_path) -> None:
    """load_global records the wait for the round to close (wait_global, round r) apart
    from the transfer of the global adapter (global_download, round r + 1)."""
    now = [100.0]
    fed = FakeFed(
        on_wait=lambda: now.__setitem__(0, now[0] + 5.0),  # the slowest client, aggregation
        on_read=lambda: now.__setitem__(0, now[0] + 0.5),  # the transfer
    )
    trainer, _, _ = _trainer(tmp_path, fed=fed, clock=lambda: now[0])
    fed.blobs[3] = trainer.to_bytes(trainer.part)
    assert trainer.load_global(3) == 3
    trainer.tracer.close()
    spans = {r["name"]: r for r in read_records(tmp_path / "trace") if r["kind"] == "span"}
    wait, download = spans["wait_global"], spans["global_download"]
    assert (wait["round"], wait["t1"] - wait["t0"], wait["bytes"]) == (3, 5.0, 0)
    assert (download["round"], download["t1"] - download["t0"]) == (4, 0.5)
    assert download["t0"] == wait["t1"] and download["bytes"] == len(fed.blobs[3])


def test_steps_record_the_downlink_rate_they_asked_for(tmp_path) -> None:
    class PacedMain(FakeMain):
        def receive_reply(self, round_index, step):
            reply, n = super().receive_reply(round_index, step)
            return dataclasses.replace(reply, downlink_bps=2e6), n

    trainer, _, _ = _trainer(tmp_path)
    trainer.main = PacedMain()
    trainer.local_iteration(0, 0)
    trainer.main = FakeMain()  # the default: a reply that was not paced
    trainer.local_iteration(0, 1)
    trainer.tracer.close()
    waits = [r for r in read_records(tmp_path / "trace") if r["name"] == "wait_reply"]
    assert [w["extra"]["downlink_bps"] for w in waits] == [2e6, 0.0]


def test_warm_up_changes_nothing_a_run_sees(tmp_path) -> None:
    # The same two steps with and without a warm-up first: same weights, same calls,
    # same batches (the warm-up's batch goes back in front), and no trace record.
    warmed, warmed_main, _ = _trainer(tmp_path / "a")
    plain, plain_main, _ = _trainer(tmp_path / "b")
    warmed.optimizer = torch.optim.AdamW(warmed.part.lora.parameters(), lr=0.1)
    plain.optimizer = torch.optim.AdamW(plain.part.lora.parameters(), lr=0.1)
    warmed.warm_up()
    assert warmed.optimizer.state_dict()["state"] == {}
    for s in range(2):
        assert warmed.local_iteration(0, s) == plain.local_iteration(0, s)
    torch.testing.assert_close(warmed.part.lora.weight, plain.part.lora.weight, rtol=0, atol=0)
    assert warmed_main.calls == plain_main.calls
    warmed.tracer.close()
    names = [r["name"] for r in read_records(tmp_path / "a" / "trace")]
    assert names.count("client_forward") == 2
