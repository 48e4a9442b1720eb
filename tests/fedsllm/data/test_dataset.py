"""TokenDataset: layout of samples, label masking, seeded batching."""

from __future__ import annotations

import pytest
import torch

from fedsllm.data.dataset import IGNORE_INDEX, Batch, TokenDataset, tokenize_texts
from fedsllm.data.tokenizer import ByteTokenizer
from fedsllm.errors import ConfigError

TOK = ByteTokenizer()


def test_right_padding_layout_and_masked_labels() -> None:
    ds = tokenize_texts(["ab", "hello world!"], TOK, seq_len=8)
    assert ds.input_ids.dtype == ds.attention_mask.dtype == ds.labels.dtype == torch.int64
    assert ds.input_ids.shape == ds.labels.shape == (2, 8)
    a, b = TOK.encode("ab")
    assert ds.input_ids[0].tolist() == [1, a, b, 2, 0, 0, 0, 0]
    assert ds.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ds.labels[0].tolist() == [1, a, b, 2] + [IGNORE_INDEX] * 4
    # Too long: cut to seq_len, eos lost, nothing masked.
    assert ds.input_ids[1].tolist() == [1, *TOK.encode("hello w")]
    assert ds.attention_mask[1].sum().item() == 8
    assert (ds.labels[1] == ds.input_ids[1]).all()


def test_left_padding() -> None:
    ds = tokenize_texts(["ab"], TOK, seq_len=6, padding_side="left")
    a, b = TOK.encode("ab")
    assert ds.input_ids[0].tolist() == [0, 0, 1, a, b, 2]
    assert ds.labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 1, a, b, 2]


def test_labels_masked_wherever_mask_is_zero() -> None:
    ds = tokenize_texts(["x" * n for n in range(12)], TOK, seq_len=10)
    assert ((ds.labels == IGNORE_INDEX) == (ds.attention_mask == 0)).all()
    assert (ds.labels[ds.attention_mask == 1] == ds.input_ids[ds.attention_mask == 1]).all()


def test_pad_equal_to_eos_still_labels_eos() -> None:
    class EosPad(ByteTokenizer):
        pad_id = 2

    ds = tokenize_texts(["a"], EosPad(), seq_len=5)
    assert ds.input_ids[0].tolist() == [1, TOK.encode("a")[0], 2, 2, 2]
    assert ds.labels[0].tolist() == [1, TOK.encode("a")[0], 2, IGNORE_INDEX, IGNORE_INDEX]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError) as err:
        tokenize_texts(["a"], TOK, seq_len=8, padding_side="middle")
    assert err.value.path == "padding_side"
    with pytest.raises(ConfigError):
        TokenDataset(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ConfigError):
        next(tokenize_texts(["a"], TOK, 8).batches(0, 0))


def _dataset(n: int) -> TokenDataset:
    return tokenize_texts([f"sample {i}" for i in range(n)], TOK, seq_len=12)


def _first_tokens(batch: Batch) -> list[str]:
    return [TOK.decode(row.tolist()) for row in batch.input_ids]


def _take(it, n: int) -> list[Batch]:
    return [next(it) for _ in range(n)]


def test_batches_deterministic_epochs_and_drop_last() -> None:
    ds = _dataset(10)
    run_a = _take(ds.batches(3, seed=5), 9)
    run_b = _take(ds.batches(3, seed=5), 9)
    run_c = _take(ds.batches(3, seed=6), 9)
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(run_a, run_b, strict=True))
    assert any(not torch.equal(x.input_ids, y.input_ids) for x, y in zip(run_a, run_c, strict=True))
    assert all(len(b) == 3 for b in run_a)
    # 3 full batches per epoch (the 10th sample is dropped), no repeats within an epoch,
    # and the next epoch is reshuffled.
    epochs = [sum((_first_tokens(b) for b in run_a[i : i + 3]), []) for i in (0, 3, 6)]
    for epoch in epochs:
        assert len(set(epoch)) == 9
    assert epochs[0] != epochs[1]
    for batch in run_a:
        assert ((batch.labels == IGNORE_INDEX) == (batch.attention_mask == 0)).all()


def test_small_shard_yields_itself() -> None:
    ds = _dataset(3)
    batches = _take(ds.batches(8, seed=0), 4)
    assert all(len(b) == 3 for b in batches)
    assert all(sorted(_first_tokens(b)) == sorted(_first_tokens(batches[0])) for b in batches)


def test_ordered_batches_cover_everything_once() -> None:
    ds = _dataset(7)
    batches = list(ds.ordered_batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([b.input_ids for b in batches]), ds.input_ids)


def test_subset() -> None:
    ds = _dataset(5)
    part = ds.subset([4, 1])
    assert len(part) == 2
    assert torch.equal(part.input_ids, ds.input_ids[[4, 1]])
    assert torch.equal(part.labels, ds.labels[[4, 1]])
