"""Data for a run: tokenizer, built-in corpora, user files, client shards.

Names are imported lazily (torch loads only with the dataset classes), so
importing the package stays cheap on the roles' start path.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Batch",
    "ByteTokenizer",
    "E2ERecord",
    "FederatedData",
    "HFTokenizer",
    "TokenDataset",
    "build_federated_data",
    "client_sizes",
    "generate_e2e",
    "generic_texts",
    "load_tokenizer",
    "partition_indices",
    "read_texts",
    "render_text",
    "tokenize_texts",
    "Tokenizer",
]


def _module_of(name: str) -> str | None:
    if name in ("ByteTokenizer", "HFTokenizer", "Tokenizer", "load_tokenizer"):
        return "tokenizer"
    if name in ("Batch", "TokenDataset", "tokenize_texts"):
        return "dataset"
    if name in ("FederatedData", "build_federated_data"):
        return "federated"
    if name in ("E2ERecord", "generate_e2e", "render_text"):
        return "e2e"
    if name == "generic_texts":
        return "generic"
    if name in ("partition_indices", "client_sizes"):
        return "partition"
    if name == "read_texts":
        return "files"
    return None


def __getattr__(name: str) -> Any:
    module = _module_of(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
