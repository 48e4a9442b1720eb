"""FedAvg of client-side LoRA adapters, weighted by data size (docs/MODEL.md section 1).

The one implementation of the aggregation rule: the fed server aggregates
with it (fed_server/rounds.py), and the audit (fedsllm/state/audit.py)
recomputes a run's global adapters with it, so an honest run reproduces
every bit. Pure numpy on parsed safetensors dicts: the fed server never
needs torch. Averages are accumulated in float64 and cast back to each
tensor's dtype once, so the result does not depend on the order clients
reported in beyond float64 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AdapterState = dict[str, np.ndarray]
"""An adapter as tensors by key (safetensors' numpy view of a blob)."""


def fedavg(states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
    """sum_k w_k * state_k / sum_k w_k, key by key, over the keys of the first
    state (the fed server checks every state against one template first):
    float64 accumulation of w_k / sum(w) * x_k in the given order, then one
    cast to the tensor's dtype."""
    if len(states) != len(weights) or not states:
        raise ValueError("fedavg needs one weight per state and at least one state")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"fedavg weights must sum to > 0, got {total}")
    result: AdapterState = {}
    for key, ref in states[0].items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].astype(np.float64) * (weight / total)
        result[key] = acc.astype(ref.dtype)
    return result
