"""Built-in model architectures as Hugging Face configs (random init, never downloaded).

Only the config lives here; building, splitting and counting are elsewhere.
The tiny presets are for tests and the default scenario (d=64, 4 blocks);
gpt2-small has GPT-2's 124M shape for timing studies.
"""

from __future__ import annotations

from typing import Any

from fedsllm.data.tokenizer import ByteTokenizer

BYTE_VOCAB_SIZE = ByteTokenizer.vocab_size
"""256 byte values + pad, bos, eos (fedsllm.data.tokenizer)."""


def preset_config(
    preset: str,
    vocab_size: int = BYTE_VOCAB_SIZE,
    max_positions: int = 512,
    attn_implementation: str = "sdpa",
) -> Any:
    """Return the transformers config of a built-in preset.

    Dropout is zero in every preset so that split and unsplit runs are
    bit-comparable; LoRA dropout is configured separately.
    """
    from transformers import GPT2Config, LlamaConfig

    if preset == "tiny-llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    elif preset in ("tiny-gpt2", "gpt2-small"):
        big = preset == "gpt2-small"
        cfg = GPT2Config(
            vocab_size=50257 if big else vocab_size,
            n_embd=768 if big else 64,
            n_layer=12 if big else 4,
            n_head=12 if big else 4,
            n_positions=1024 if big else max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    else:
        raise ValueError(f"unknown preset {preset!r}")
    cfg._attn_implementation = attn_implementation
    return cfg


def scenario_preset_config(scenario: Any, vocab_size: int = BYTE_VOCAB_SIZE) -> Any:
    """The config of a scenario's preset, exactly as fedsllm.model.build builds it
    (position table of at least 512 and enough for data.seq_len), so that the
    FLOP counts and the model describe the same architecture."""
    return preset_config(
        scenario.model.preset,
        vocab_size,
        max(512, scenario.data.seq_len),
        scenario.model.attn_implementation,
    )
