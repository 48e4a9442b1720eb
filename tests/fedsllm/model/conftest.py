"""Shared fixtures of the model tests: tiny scenarios, padded batches, a private cache."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fedsllm.config import DataConfig, ModelConfig, ScenarioConfig, SplitConfig


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every pretrain cache of these tests out of the user's ~/.cache."""
    monkeypatch.setenv("FEDSLLM_CACHE", str(tmp_path_factory.mktemp("fedsllm-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


@pytest.fixture
def tiny_scenario() -> Callable[..., ScenarioConfig]:
    def make(
        preset: str = "tiny-llama",
        attn: str = "sdpa",
        pretrain_steps: int = 0,
        seq_len: int = 16,
        split_layer: int = 2,
        seed: int = 0,
    ) -> ScenarioConfig:
        return ScenarioConfig(
            seed=seed,
            model=ModelConfig(
                preset=preset, pretrain_steps=pretrain_steps, attn_implementation=attn
            ),
            split=SplitConfig(split_layer=split_layer),
            data=DataConfig(seq_len=seq_len),
        )

    return make


def make_batch(
    side: str, batch_size: int = 3, seq_len: int = 12, vocab_size: int = 259, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) with rows of different lengths padded on `side`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=gen)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    for row in range(1, batch_size):
        length = max(2, seq_len - 4 * row)
        if side == "right":
            mask[row, length:] = 0
        else:
            mask[row, : seq_len - length] = 0
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


@pytest.fixture
def padded_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return make_batch
