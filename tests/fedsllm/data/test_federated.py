"""build_federated_data: same shards from the same scenario, sizes and sources."""

from __future__ import annotations

import json

import pytest
import torch

from fedsllm.config import load_scenario
from fedsllm.data.dataset import IGNORE_INDEX
from fedsllm.data.federated import build_client_data, build_federated_data, split_texts
from fedsllm.data.tokenizer import ByteTokenizer
from fedsllm.errors import ConfigError

TOK = ByteTokenizer()


def _scenario(*overrides: str):
    base = ["data.num_train_samples=300", "data.num_val_samples=20", "data.seq_len=32"]
    return load_scenario(None, base + list(overrides))


def _same(a, b) -> bool:
    return (
        len(a.train) == len(b.train)
        and all(
            torch.equal(x.input_ids, y.input_ids) for x, y in zip(a.train, b.train, strict=True)
        )
        and torch.equal(a.val.input_ids, b.val.input_ids)
    )


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_e2e_deterministic_and_sized(partition: str) -> None:
    scenario = _scenario(f'data.partition="{partition}"', "clients.num_clients=4")
    data = build_federated_data(scenario, TOK)
    assert data.num_clients == 4
    assert sum(data.client_num_samples) == 300
    assert len(data.val) == 20
    assert all(t.seq_len == 32 for t in data.train)
    assert _same(data, build_federated_data(scenario, TOK))
    other = build_federated_data(
        _scenario(f'data.partition="{partition}"', "clients.num_clients=4", "seed=1"), TOK
    )
    assert not _same(data, other)
    for shard in [*data.train, data.val]:
        assert ((shard.labels == IGNORE_INDEX) == (shard.attention_mask == 0)).all()


def test_e2e_val_is_disjoint_from_train_and_fractions_honoured() -> None:
    scenario = _scenario("clients.num_clients=3", "data.client_fractions=[1.0, 1.0, 2.0]")
    train, val, classes = split_texts(scenario)
    assert len(train) == 300 and len(val) == 20 and classes is not None
    assert not set(train) & set(val)
    data = build_federated_data(scenario, TOK)
    assert data.client_num_samples == [75, 75, 150]


def test_user_text_file(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"sample {i}"}) for i in range(30)) + "\n")
    scenario = _scenario(
        'data.source="jsonl"',
        f'data.path="{path}"',
        "clients.num_clients=2",
        "data.num_val_samples=5",
    )
    data = build_federated_data(scenario, TOK)
    assert len(data.val) == 5
    assert data.client_num_samples == [13, 12]
    assert TOK.decode(data.val.input_ids[-1].tolist()) == "sample 29"
    # Too many validation samples for the file: falls back to 10%.
    scenario = _scenario(
        'data.source="jsonl"',
        f'data.path="{path}"',
        "clients.num_clients=2",
        "data.num_val_samples=29",
    )
    data = build_federated_data(scenario, TOK)
    assert len(data.val) == 3
    assert sum(data.client_num_samples) == 27


def test_user_file_errors(tmp_path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("only one line\n")
    with pytest.raises(ConfigError) as err:
        build_federated_data(_scenario('data.source="text"', f'data.path="{path}"'), TOK)
    assert err.value.path == "data.path"
    path.write_text("\n".join(f"line {i}" for i in range(20)))
    with pytest.raises(ConfigError) as err:
        build_federated_data(
            _scenario('data.source="text"', f'data.path="{path}"', 'data.partition="dirichlet"'),
            TOK,
        )
    assert err.value.path == "data.partition"


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_client_data_is_its_shard_of_the_federated_data(partition: str) -> None:
    scenario = _scenario(f'data.partition="{partition}"', "clients.num_clients=5")
    data = build_federated_data(scenario, TOK)
    for k in (0, 3):
        train, val = build_client_data(scenario, TOK, k, with_val=k == 0)
        for name in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(getattr(train, name), getattr(data.train[k], name))
        assert (val is None) == (k != 0)
        if val is not None:
            assert torch.equal(val.input_ids, data.val.input_ids)
