"""A torch optimizer's state as one safetensors blob, for MainServerStore and ClientStore.

`optimizer_to_bytes` puts every tensor of `optimizer.state_dict()` into a
safetensors blob (names ``state.<param>.<field>``) and the rest (param
groups, non-tensor fields) as JSON in its __metadata__; `optimizer_from_bytes`
rebuilds the state dict for `optimizer.load_state_dict`. Restoring it
continues training exactly where the saved optimizer stopped (moments and
step counts included). JSON gives tuples back as lists (AdamW's betas),
which load_state_dict accepts; a param-group value that is a tensor is not
supported. Torch is imported lazily; nothing here touches disk.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fedsllm.errors import WireError

_META_KEY = "fedsllm_optimizer"


def optimizer_to_bytes(state_dict: dict[str, Any]) -> bytes:
    """safetensors bytes of `optimizer.state_dict()`."""
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param, fields in state_dict["state"].items():
        plain[str(param)] = {}
        for name, value in fields.items():
            if hasattr(value, "detach"):
                tensors[f"state.{param}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                plain[str(param)][name] = value
    meta = {"param_groups": state_dict["param_groups"], "plain": plain}
    return save(tensors, metadata={_META_KEY: json.dumps(meta)})


def optimizer_from_bytes(blob: bytes) -> dict[str, Any]:
    """The state dict `optimizer_to_bytes` saved; WireError("optimizer") for anything else."""
    from safetensors.torch import load

    try:
        tensors = load(bytes(blob))
        (size,) = struct.unpack("<Q", blob[:8])
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
        info = json.loads(meta[_META_KEY])
    except (KeyError, ValueError, struct.error) as err:
        raise WireError("optimizer", f"not a saved optimizer state ({err!r})") from None
    except Exception as err:  # safetensors raises its own type for bad bytes
        raise WireError("optimizer", f"not a valid safetensors blob ({err})") from None
    state: dict[int, dict[str, Any]] = {int(p): dict(f) for p, f in info["plain"].items()}
    for key, value in tensors.items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}
