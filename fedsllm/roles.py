"""Start-up helpers shared by the three role processes (no role logic here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsllm.config import ScenarioConfig, from_dict


def load_resolved_scenario(path: str | Path) -> tuple[ScenarioConfig, str]:
    """Read the launcher's scenario.json; returns the scenario and its hash."""
    doc = json.loads(Path(path).read_text())
    scenario_hash = doc.pop("scenario_hash", "")
    return from_dict(doc), scenario_hash


def build_part(scenario: ScenarioConfig, side: str) -> tuple[Any, Any, Any]:
    """Build the base model, split it, and put LoRA on `side` ("client" or "server").

    Returns (peft-wrapped part, tokenizer, model config). Every process calls
    this with the same scenario and gets identical frozen weights and an
    identical initial adapter (seeded), so nothing but adapters and
    activations ever needs to cross the wire.
    """
    import torch

    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import build_base_model, model_family
    from fedsllm.model.lora import apply_lora
    from fedsllm.model.split import split_model

    torch.set_num_threads(scenario.run.num_threads)
    tokenizer = load_tokenizer(scenario)
    base = build_base_model(scenario, tokenizer.vocab_size)
    family = model_family(base)
    client_part, server_part = split_model(base, scenario.split.split_layer)
    part = client_part if side == "client" else server_part
    peft_part = apply_lora(part, scenario.adapter, family, seed=scenario.seed)
    return peft_part, tokenizer, base.config
