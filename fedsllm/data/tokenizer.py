"""Text <-> token ids: the built-in byte tokenizer, or a local checkpoint's own.

Every sample the project trains on goes through one object with the same five
attributes (`vocab_size`, `pad_id`, `bos_id`, `eos_id`, `encode`, `decode`),
so dataset code never asks which kind it holds. Building batches and adding
special tokens is left to `fedsllm.data.dataset`. transformers is imported
only when a checkpoint path is given, so the roles start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fedsllm.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fedsllm.config import ScenarioConfig

NUM_SPECIAL_IDS = 3
"""Ids below this are specials (pad, bos, eos); byte b is id b + 3."""


class Tokenizer(Protocol):
    """What dataset code needs from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, nothing to download, and any
    text round-trips, which is all the tiny preset models need."""

    vocab_size: int = 256 + NUM_SPECIAL_IDS
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without bos/eos (the dataset adds those)."""
        return [b + NUM_SPECIAL_IDS for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; specials and out-of-range ids are dropped so model
        samples always decode, and broken UTF-8 becomes U+FFFD."""
        data = bytes(
            int(i) - NUM_SPECIAL_IDS for i in ids if NUM_SPECIAL_IDS <= int(i) < self.vocab_size
        )
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


class HFTokenizer:
    """A checkpoint's tokenizer behind the `Tokenizer` attributes.

    Checkpoints without a pad token (GPT-2) pad with eos; padding is masked
    out of the loss anyway. Without a bos token, eos doubles as bos, as
    GPT-2 itself does.
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf_tokenizer = hf_tokenizer
        eos = hf_tokenizer.eos_token_id
        bos = hf_tokenizer.bos_token_id
        pad = hf_tokenizer.pad_token_id
        if eos is None:
            eos = bos if bos is not None else pad
        if eos is None:
            raise ConfigError(
                "model.path",
                getattr(hf_tokenizer, "name_or_path", "?"),
                "tokenizer has no eos, bos or pad token",
            )
        self.vocab_size: int = len(hf_tokenizer)
        self.eos_id: int = int(eos)
        self.bos_id: int = int(bos) if bos is not None else self.eos_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without the checkpoint's own specials."""
        return list(self.hf_tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` with special tokens skipped."""
        return str(self.hf_tokenizer.decode([int(i) for i in ids], skip_special_tokens=True))

    def __repr__(self) -> str:
        name = getattr(self.hf_tokenizer, "name_or_path", "?")
        return f"HFTokenizer({name!r}, vocab_size={self.vocab_size})"


def load_tokenizer(scenario: ScenarioConfig) -> ByteTokenizer | HFTokenizer:
    """The tokenizer the scenario's model was built for: bytes for presets,
    the checkpoint's own (local files only) when `model.path` is set."""
    path = scenario.model.path
    if not path:
        return ByteTokenizer()
    from transformers import AutoTokenizer

    from fedsllm.model.checkpoint import checkpoint_dir

    checkpoint_dir(scenario)

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError("model.path", path, f"cannot load a tokenizer ({err})") from None
    return HFTokenizer(hf_tokenizer)
