"""Build the frozen base causal LM that every process of a run shares.

Every role (clients, main server, export) calls `build_base_model` with the
same scenario and gets bit-identical weights without exchanging them:

- `model.path` set: the local Hugging Face checkpoint (never downloaded).
- otherwise the preset from `fedsllm.model.presets`, randomly initialised
  under `torch.manual_seed(scenario.seed)`, then, for the tiny presets only,
  given a short cached base pretraining (`fedsllm.model.pretrain`) so that
  LoRA fine-tuning has a meaningful base to adapt. gpt2-small is never
  pretrained here (hundreds of steps of a 124M model take too long on a CPU
  testbed); it keeps its random base and serves timing studies.

The returned model is in eval mode, all of its parameters are frozen and all
dropout is off (LoRA dropout is configured on the adapters). Splitting,
LoRA and counting live in split.py, lora.py and counts.py.
"""

from __future__ import annotations

import logging
from typing import Any

from fedsllm.errors import ConfigError

log = logging.getLogger(__name__)

PRETRAIN_PRESETS = ("tiny-llama", "tiny-gpt2")
"""Presets that get base pretraining when model.pretrain_steps > 0."""

SUPPORTED_FAMILIES = {"llama": "llama", "gpt2": "gpt2"}
"""transformers model_type -> the split family that handles it."""


def model_family(model: Any) -> str:
    """ "llama" or "gpt2": which split recipe fits this model.

    Raises ConfigError (model.path) for any other architecture, since only a
    user checkpoint can bring one in.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = SUPPORTED_FAMILIES.get(model_type or "")
    if family is None:
        raise ConfigError(
            "model.path",
            model_type,
            f"unsupported architecture (supported: {', '.join(SUPPORTED_FAMILIES)})",
        )
    return family


def _disable_dropout(model: Any) -> None:
    """Zero every base dropout so split and unsplit runs compare exactly even in train mode."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0


def _freeze(model: Any) -> Any:
    model.requires_grad_(False)
    model.eval()
    return model


def build_preset_model(scenario: Any, vocab_size: int) -> Any:
    """The preset with its seeded random init only (no pretraining, not frozen)."""
    import torch
    from transformers import AutoModelForCausalLM

    from fedsllm.model.presets import scenario_preset_config

    cfg = scenario_preset_config(scenario, vocab_size)
    # fork_rng keeps the caller's global RNG stream untouched by the init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(scenario.seed)
        model = AutoModelForCausalLM.from_config(cfg)
    _disable_dropout(model)
    return model


def _load_checkpoint(scenario: Any) -> Any:
    from transformers import AutoModelForCausalLM

    from fedsllm.model.checkpoint import checkpoint_dir

    path = checkpoint_dir(scenario)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation=scenario.model.attn_implementation
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            "model.path", path, f"cannot load a causal LM checkpoint ({err})"
        ) from None
    _disable_dropout(model)
    return model


def prepare_base(scenario: Any, on_step: Any = None) -> Any:
    """Pretrain and cache the scenario's base once, before any role starts.

    Every role builds the same base; a preset that is pretrained (a few hundred
    steps, tens of seconds on a CPU the first time) would otherwise leave the
    launcher silent while one role trains and the others wait on the cache
    lock. Returns the `PretrainResult` (with `cache_hit`), or None when the base
    needs no pretraining (a checkpoint, a preset that is not pretrained, or
    model.pretrain_steps = 0). `on_step(done, total, loss)` sees every step.
    """
    if scenario.model.path or scenario.model.pretrain_steps <= 0:
        return None
    if scenario.model.preset not in PRETRAIN_PRESETS:
        return None
    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.pretrain import pretrain_base

    vocab_size = load_tokenizer(scenario).vocab_size
    return pretrain_base(build_preset_model(scenario, vocab_size), scenario, vocab_size, on_step)


def build_base_model(scenario: Any, vocab_size: int, weights: Any = None) -> Any:
    """The run's frozen base model (eval mode, requires_grad False everywhere).

    `vocab_size` sizes a preset's embedding (the tokenizer's vocabulary);
    it is ignored for a checkpoint, which brings its own. `weights` is a
    safetensors file of the preset's whole state (the fed server's base,
    fetched over the wire): loaded strictly instead of pretraining here.
    """
    if weights is not None and not scenario.model.path:
        from safetensors.torch import load_model

        model = build_preset_model(scenario, vocab_size)
        load_model(model, str(weights), strict=True)
        log.info("base model weights from %s", weights)
    elif scenario.model.path:
        log.info("loading base model from %s", scenario.model.path)
        model = _load_checkpoint(scenario)
    else:
        model = build_preset_model(scenario, vocab_size)
        steps = scenario.model.pretrain_steps
        if steps > 0 and scenario.model.preset in PRETRAIN_PRESETS:
            from fedsllm.model.pretrain import pretrain_base

            pretrain_base(model, scenario, vocab_size)
        elif steps > 0:
            log.info(
                "base pretraining skipped for preset %s (only %s are pretrained); "
                "the base keeps its random init",
                scenario.model.preset,
                ", ".join(PRETRAIN_PRESETS),
            )
    model_family(model)
    return _freeze(model)
