"""The fed server's adapter checks: blobs parsed and serialized (safetensors),
each update held to the run's template (keys, shapes, dtypes, finite values).

Pure numpy on parsed safetensors dicts: the fed server never needs torch.
The average itself is the core's (fedsllm.model.fedavg), which the audit
recomputes runs with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsllm.errors import WireError
from fedsllm.model.fedavg import AdapterState


def parse_adapter(blob: bytes) -> AdapterState:
    """safetensors bytes -> dict of numpy arrays; any parse failure is a WireError."""
    from safetensors.numpy import load

    try:
        state = load(blob)
    except Exception as err:  # safetensors raises several types for bad bytes
        raise WireError("adapter", f"not a valid safetensors blob ({err})") from None
    if not state:
        raise WireError("adapter", "holds no tensors")
    return state


def serialize_adapter(state: Mapping[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in state.items()})


def check_compatible(state: AdapterState, template: AdapterState) -> None:
    """Same keys, shapes and dtypes as `template`, and every value finite."""
    missing = sorted(set(template) - set(state))
    extra = sorted(set(state) - set(template))
    if missing or extra:
        raise WireError("adapter.keys", f"missing {missing[:3]}, unexpected {extra[:3]}")
    for key, ref in template.items():
        value = state[key]
        if value.shape != ref.shape:
            raise WireError(f"adapter[{key}].shape", f"{value.shape}, expected {ref.shape}")
        if value.dtype != ref.dtype:
            raise WireError(f"adapter[{key}].dtype", f"{value.dtype}, expected {ref.dtype}")
        if not np.all(np.isfinite(value)):
            raise WireError(f"adapter[{key}]", "holds NaN or Inf")


def check_finite_float(state: AdapterState) -> None:
    """The first adapter of a run has no template; it must still be sane."""
    for key, value in state.items():
        if value.dtype.kind != "f":
            raise WireError(f"adapter[{key}].dtype", f"{value.dtype}, expected a float type")
        if not np.all(np.isfinite(value)):
            raise WireError(f"adapter[{key}]", "holds NaN or Inf")


def template_from_spec(spec: Mapping[str, tuple[Sequence[int], str]]) -> AdapterState:
    """An adapter template (key -> array of the right shape and dtype) from
    key -> (shape, dtype name), as the model gives it (fedsllm.roles.
    client_adapter_template). The arrays are zero-stride views: no memory."""
    try:
        return {
            key: np.broadcast_to(np.zeros((), dtype=np.dtype(dtype)), tuple(shape))
            for key, (shape, dtype) in spec.items()
        }
    except TypeError as err:  # a dtype numpy lacks (bfloat16): check keys only
        raise ValueError(f"adapter template not representable in numpy: {err}") from None
