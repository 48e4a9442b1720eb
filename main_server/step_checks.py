"""What a well-formed train or eval step is, for this model and scenario.

The main server reads a step through a ChunkAssembler with `step_specs`:
dtypes, shapes (B and T bound across the three tensors, the hidden size
fixed), finite activations, and the values of the two small tensors, each
checked the moment its tensor is complete (TensorSpec.check). A client
sends the mask and labels first, with the first activation chunk, so their
checks overlap the rest of the step's transfer, and a bad value is refused
before megabytes of activations are received; the stream then ends with
INVALID_ARGUMENT and nothing of the step reaches the model.

The checks read the values through numpy: the tensors are small (batch x
sequence integers), and a handful of torch calls cost more per step than
the data itself (issue 13).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedsllm.data.dataset import IGNORE_INDEX
from fedsllm.errors import WireError
from fedsllm.wire.tensors import TensorSpec

STEP_TENSORS = ("activations", "attention_mask", "labels")


@dataclass(frozen=True)
class StepLimits:
    """What a well-formed step looks like for this model and scenario."""

    hidden_size: int
    vocab_size: int
    max_seq_len: int
    max_batch: int
    wire_dtype: str
    num_clients: int
    max_tensor_bytes: int


def check_mask(limits: StepLimits, mask: np.ndarray) -> None:
    """The batch and sequence limits (the mask's shape is the step's B x T),
    and mask values of 0 or 1."""
    batch, seq = mask.shape
    if batch > limits.max_batch:
        raise WireError("attention_mask.shape[0]", f"={batch}, expected <= {limits.max_batch}")
    if seq > limits.max_seq_len:
        raise WireError("attention_mask.shape[1]", f"={seq}, expected <= {limits.max_seq_len}")
    # One reduction: the OR of values that are all 0 or 1 is 0 or 1; any other
    # value, a negative one too (two's complement), sets a higher bit.
    if int(np.bitwise_or.reduce(mask, axis=None)) & ~1:
        raise WireError("attention_mask", "values must be 0 or 1")


def check_labels(limits: StepLimits, labels: np.ndarray) -> None:
    """Every label IGNORE_INDEX or a token of the vocabulary, and at least one
    token to predict once the loss shifts the labels by one."""
    ignored = labels == IGNORE_INDEX
    # One reduction for both bounds: as unsigned, a negative label is above
    # any vocabulary size.
    if np.where(ignored, 0, labels).view(np.uint64).max() >= limits.vocab_size:
        valid = ignored | ((labels >= 0) & (labels < limits.vocab_size))
        bad = int(labels[~valid][0])
        raise WireError(
            "labels", f"value {bad} is neither {IGNORE_INDEX} nor in [0, {limits.vocab_size})"
        )
    # num_loss_tokens(labels) == 0, without the torch calls.
    if ignored[:, 1:].all():
        raise WireError("labels", f"no token to predict (all {IGNORE_INDEX} after the shift)")


def step_specs(limits: StepLimits) -> list[TensorSpec]:
    """The three tensors of a step as the main server accepts them."""
    return [
        TensorSpec(
            "activations",
            frozenset({limits.wire_dtype}),
            ("B", "T", limits.hidden_size),
            require_finite=True,
        ),
        TensorSpec(
            "attention_mask",
            frozenset({"int64"}),
            ("B", "T"),
            check=functools.partial(check_mask, limits),
        ),
        TensorSpec(
            "labels",
            frozenset({"int64"}),
            ("B", "T"),
            check=functools.partial(check_labels, limits),
        ),
    ]
