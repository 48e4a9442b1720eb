"""Tiny adapters as safetensors bytes, shared by the state tests."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save


def adapter(seed: int, dtype: str = "float32", shape: tuple[int, ...] = (2, 3)) -> bytes:
    rng = np.random.default_rng(seed)
    return save(
        {
            "lora_A": rng.standard_normal(shape).astype(dtype),
            "lora_B": rng.standard_normal((shape[1], 2)).astype(dtype),
        }
    )
