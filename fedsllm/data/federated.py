"""The scenario's data, cut into per-client training shards plus validation.

Every process (each client, the servers, the report) calls
`build_federated_data` with the same scenario and gets the same shards, so
no sample ever crosses the wire; a client simply keeps `train[k]`. Text
sources live in `e2e` and `files`, the split in `partition`, the tensors in
`dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsllm.data.dataset import TokenDataset, tokenize_texts
from fedsllm.data.e2e import generate_e2e
from fedsllm.data.files import read_texts
from fedsllm.data.partition import partition_indices
from fedsllm.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from fedsllm.config import ScenarioConfig
    from fedsllm.data.tokenizer import Tokenizer

PARTITION_ATTRIBUTE = "food"
"""E2E attribute whose values the Dirichlet partition skews across clients."""

FALLBACK_VAL_FRACTION = 0.1
"""Share of a user file kept for validation when num_val_samples would
leave a client without training data."""


@dataclass(frozen=True, slots=True)
class FederatedData:
    """Training shard of each client (index = client id), the shared
    validation set, and D_k (shard sizes, the FedAvg weights)."""

    train: list[TokenDataset]
    val: TokenDataset

    @property
    def client_num_samples(self) -> list[int]:
        """D_k: the shard sizes."""
        return [len(t) for t in self.train]

    @property
    def num_clients(self) -> int:
        return len(self.train)


def split_texts(
    scenario: ScenarioConfig,
) -> tuple[list[str], list[str], list[str] | None]:
    """(train texts, validation texts, partition class per train text or
    None) from the scenario's source, before tokenizing."""
    data = scenario.data
    if data.source == "e2e":
        records = generate_e2e(data.num_train_samples + data.num_val_samples, scenario.seed)
        train = records[: data.num_train_samples]
        val = records[data.num_train_samples :]
        classes = [r.attributes[PARTITION_ATTRIBUTE] for r in train]
        return [r.text for r in train], [r.text for r in val], classes
    texts = read_texts(data.path, data.source)
    num_clients = scenario.clients.num_clients
    num_val = data.num_val_samples
    if len(texts) - num_val < num_clients:
        num_val = max(1, int(len(texts) * FALLBACK_VAL_FRACTION))
    if len(texts) - num_val < num_clients:
        raise ConfigError(
            "data.path",
            data.path,
            f"holds {len(texts)} samples: too few for {num_clients} clients "
            f"plus {num_val} validation samples",
        )
    return texts[:-num_val], texts[-num_val:], None


def _texts_and_shards(scenario: ScenarioConfig) -> tuple[list[str], list[str], list[np.ndarray]]:
    """Training texts, validation texts and every client's shard of indices: the one
    partition both the launcher-side build and a client's own build agree on."""
    data = scenario.data
    train_texts, val_texts, classes = split_texts(scenario)
    if data.partition == "dirichlet" and classes is None:
        raise ConfigError(
            "data.partition",
            data.partition,
            f"needs per-sample attributes, which only source e2e has (source is {data.source})",
        )
    shards = partition_indices(
        len(train_texts),
        scenario.clients.num_clients,
        scenario.seed,
        fractions=data.client_fractions,
        attributes=classes,
        alpha=data.dirichlet_alpha if data.partition == "dirichlet" else None,
    )
    return train_texts, val_texts, shards


def build_federated_data(scenario: ScenarioConfig, tokenizer: Tokenizer) -> FederatedData:
    """Shards and validation set of the scenario, identical in every process.

    Sources jsonl/text keep the file's last num_val_samples samples for
    validation (10% when that would starve a client) and train on all the
    rest; num_train_samples applies to the e2e generator only. The
    dirichlet partition needs attributes and so only works with source e2e.
    """
    data = scenario.data
    train_texts, val_texts, shards = _texts_and_shards(scenario)
    all_train = tokenize_texts(train_texts, tokenizer, data.seq_len)
    train = [all_train.subset(idx) for idx in shards]
    val = tokenize_texts(val_texts, tokenizer, data.seq_len)
    return FederatedData(train=train, val=val)


def build_client_data(
    scenario: ScenarioConfig, tokenizer: Tokenizer, client_id: int, *, with_val: bool = False
) -> tuple[TokenDataset, TokenDataset | None]:
    """Client `client_id`'s training shard (and the validation set if `with_val`),
    equal to `build_federated_data(...).train[client_id]` (and `.val`), tokenizing
    only those texts: the partition needs every sample's index and class, but a
    client never tokenizes (or holds) another client's shard."""
    data = scenario.data
    train_texts, val_texts, shards = _texts_and_shards(scenario)
    own = [train_texts[int(i)] for i in shards[client_id]]
    train = tokenize_texts(own, tokenizer, data.seq_len)
    val = tokenize_texts(val_texts, tokenizer, data.seq_len) if with_val else None
    return train, val
