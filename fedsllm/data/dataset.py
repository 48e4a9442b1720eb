"""Token tensors for training: fixed-length samples and seeded minibatches.

A `TokenDataset` holds every sample of one shard as padded int64 tensors;
`batches` walks it in a per-epoch shuffled order that depends only on the
seed, so a client restarted with the same scenario sees the same batches.
Where the texts come from and how they are split across clients is left to
`fedsllm.data.federated`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsllm.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from fedsllm.data.tokenizer import Tokenizer

IGNORE_INDEX = -100
"""Label value the loss skips (torch cross_entropy's default ignore_index)."""

PADDING_SIDES = ("right", "left")


def seed_words(seed: int, *more: int) -> list[int]:
    """Non-negative words for numpy's SeedSequence from a possibly negative
    scenario seed plus stream tags, so every stream is seeded and distinct."""
    return [seed % 2**64, *more]


@dataclass(frozen=True, slots=True)
class Batch:
    """One minibatch; all three are int64 tensors of shape (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class TokenDataset:
    """Padded samples of one shard as (N, T) int64 tensors.

    Labels equal input_ids except -100 where attention_mask is 0, so padding
    never counts in the loss (the model shifts labels itself).
    """

    def __init__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> None:
        import torch

        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ConfigError(
                "attention_mask",
                tuple(attention_mask.shape),
                f"must be 2-D and match input_ids shape {tuple(input_ids.shape)}",
            )
        self.input_ids = input_ids.to(torch.int64)
        self.attention_mask = attention_mask.to(torch.int64)
        if labels is None:
            labels = self.input_ids.masked_fill(self.attention_mask == 0, IGNORE_INDEX)
        elif labels.shape != input_ids.shape:
            raise ConfigError(
                "labels",
                tuple(labels.shape),
                f"must match input_ids shape {tuple(input_ids.shape)}",
            )
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per sample (T)."""
        return int(self.input_ids.shape[1])

    def __repr__(self) -> str:
        return f"TokenDataset(num_samples={len(self)}, seq_len={self.seq_len})"

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenDataset:
        """The samples at `indices`, in that order (copies)."""
        import torch

        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TokenDataset(self.input_ids[index], self.attention_mask[index], self.labels[index])

    def batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """The samples at `indices` as one Batch."""
        part = self.subset(indices)
        return Batch(part.input_ids, part.attention_mask, part.labels)

    def batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless minibatches: each epoch is a fresh permutation drawn from
        (seed, epoch), and its last partial batch is dropped so every step
        has the same size. A shard smaller than one batch yields itself
        whole (shuffled) every time, rather than nothing."""
        if batch_size < 1:
            raise ConfigError("training.batch_size", batch_size, "must be >= 1")
        num_samples = len(self)
        if num_samples == 0:
            raise ConfigError("dataset", 0, "has no samples to batch")
        epoch = 0
        while True:
            order = np.random.default_rng(seed_words(seed, epoch)).permutation(num_samples)
            if num_samples < batch_size:
                yield self.batch(order)
            else:
                for start in range(0, num_samples - batch_size + 1, batch_size):
                    yield self.batch(order[start : start + batch_size])
            epoch += 1

    def ordered_batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass in storage order, last batch possibly short (for
        evaluation, where every sample should count once)."""
        if batch_size < 1:
            raise ConfigError("training.batch_size", batch_size, "must be >= 1")
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))


def tokenize_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    seq_len: int,
    padding_side: str = "right",
) -> TokenDataset:
    """Each text as [bos] + tokens + [eos], cut to `seq_len` (the eos is lost
    when a text is too long) and padded with pad_id on `padding_side`."""
    import torch

    if seq_len < 2:
        raise ConfigError("data.seq_len", seq_len, "must be >= 2")
    if padding_side not in PADDING_SIDES:
        raise ConfigError("padding_side", padding_side, "must be right or left")
    input_ids = torch.full((len(texts), seq_len), tokenizer.pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(texts), seq_len), dtype=torch.int64)
    for row, text in enumerate(texts):
        ids = ([tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id])[:seq_len]
        length = len(ids)
        cols = slice(0, length) if padding_side == "right" else slice(seq_len - length, seq_len)
        input_ids[row, cols] = torch.tensor(ids, dtype=torch.int64)
        attention_mask[row, cols] = 1
    return TokenDataset(input_ids, attention_mask)
