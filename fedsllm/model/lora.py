"""LoRA on a split part, and moving adapter state in and out as safetensors bytes.

Adapters are applied with peft and move only through peft's two state-dict
functions plus safetensors; nothing is pickled. Bytes that
arrive from the wire are parsed and checked against the receiving model
(key set, shapes, dtype, finiteness) before anything is loaded, and a bad
blob raises `WireError` without touching the model. Aggregation and
transport are left to the roles and fedsllm/wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedsllm.errors import ConfigError, WireError
from fedsllm.model.counts import DEFAULT_TARGETS


def lora_config(adapter_cfg: Any, family: str) -> Any:
    """The peft LoraConfig for a scenario's AdapterConfig and a model family.

    GPT-2 keeps its weights in Conv1D (in, out) layout, hence fan_in_fan_out.
    """
    from peft import LoraConfig

    targets = list(adapter_cfg.target_modules) or list(DEFAULT_TARGETS[family])
    return LoraConfig(
        r=adapter_cfg.rank,
        lora_alpha=adapter_cfg.alpha,
        lora_dropout=adapter_cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=family == "gpt2",
        bias="none",
    )


def apply_lora(part: torch.nn.Module, adapter_cfg: Any, family: str, seed: int = 0) -> Any:
    """Wrap `part` in a peft model with fresh LoRA adapters; only they are trainable.

    The adapter init (LoRA A is random, B is zero) runs under
    `torch.manual_seed(seed)` so every client starts from the same client
    adapter without exchanging it; the caller's RNG stream is left as it was.
    """
    from peft import get_peft_model

    if family not in DEFAULT_TARGETS:
        raise ConfigError("model.path", family, f"no LoRA recipe for family {family!r}")
    cfg = lora_config(adapter_cfg, family)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(part, cfg)
    except ValueError as err:
        # peft raises ValueError when no module matches the targets.
        raise ConfigError(
            "adapter.target_modules",
            tuple(cfg.target_modules),
            f"matches no module of this model part ({err})",
        ) from None


def adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed as peft's get_peft_model_state_dict names them."""
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(peft_model))


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a tensor dict (copied to contiguous CPU tensors first)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def bytes_to_state(data: bytes, field: str = "adapter") -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; anything unreadable raises WireError(`field`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(field, f"expected safetensors bytes, got {type(data).__name__}")
    try:
        return load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as err:
        raise WireError(field, f"not a valid safetensors blob ({err})") from None


def validate_state(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], field: str = "adapter"
) -> None:
    """Raise WireError unless `state` matches `reference` key for key.

    Checks the key set, then for each key: shape, floating dtype equal to
    the reference's, and all values finite. Messages name the key.
    """
    missing = sorted(set(reference) - set(state))
    if missing:
        raise WireError(f"{field}[{missing[0]}]", f"missing key ({len(missing)} missing in all)")
    extra = sorted(set(state) - set(reference))
    if extra:
        raise WireError(f"{field}[{extra[0]}]", f"unexpected key ({len(extra)} unexpected in all)")
    for key in sorted(reference):
        got, want = state[key], reference[key]
        if tuple(got.shape) != tuple(want.shape):
            raise WireError(
                f"{field}[{key}]", f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            )
        if not got.dtype.is_floating_point or got.dtype != want.dtype:
            raise WireError(f"{field}[{key}]", f"dtype {got.dtype}, expected {want.dtype}")
        if not bool(torch.isfinite(got).all()):
            raise WireError(f"{field}[{key}]", "contains NaN or infinite values")


def adapter_to_bytes(peft_model: Any) -> bytes:
    """The model's adapter as safetensors bytes (keys as get_peft_model_state_dict)."""
    return state_to_bytes(adapter_state(peft_model))


def adapter_from_bytes(
    data: bytes, peft_model: Any, field: str = "adapter"
) -> dict[str, torch.Tensor]:
    """Parse and check adapter bytes against `peft_model`; the model is never touched.

    Returns the state dict ready for `load_adapter`. Raises WireError naming
    the key and the problem for garbage, wrong keys, shapes, dtypes or
    non-finite values.
    """
    state = bytes_to_state(data, field)
    validate_state(state, adapter_state(peft_model), field)
    return state


def load_adapter(peft_model: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (checked by adapter_from_bytes or validate_state) into the adapter."""
    from peft import set_peft_model_state_dict

    device = next(iter(adapter_state(peft_model).values())).device
    result = set_peft_model_state_dict(peft_model, {k: v.to(device) for k, v in state.items()})
    if result.unexpected_keys:
        raise WireError(f"adapter[{result.unexpected_keys[0]}]", "unexpected key")
