"""What a valid step is (main_server.step_checks), as the main server's
assembler applies it: the mask and label values checked the moment each
tensor is complete, so a bad value is refused before the rest of the step
is read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fedsllm.errors import WireError
from fedsllm.wire.messages import StepHeaderInfo, TrainHelloInfo
from fedsllm.wire.tensors import ChunkAssembler, frame_to_chunks, tensor_to_frame
from fedsllm.wire.train import (
    decode_train_request,
    encode_train_request,
    read_uplink,
    step_upload_requests,
)
from main_server.step_checks import StepLimits, step_specs

B, T, D = 2, 16, 64

VALUE_LIMITS = StepLimits(
    hidden_size=D,
    vocab_size=259,
    max_seq_len=T,
    max_batch=8,
    wire_dtype="float32",
    num_clients=1,
    max_tensor_bytes=2**20,
)
"""Limits of the value-check tests (no gRPC): a 259-token vocabulary."""


def assemble_mask_and_labels(mask: torch.Tensor, labels: torch.Tensor) -> None:
    """The two small tensors through the main server's specs, in small chunks,
    as its assembler reads them."""
    assembler = ChunkAssembler.for_specs(step_specs(VALUE_LIMITS))
    for name, tensor in (("attention_mask", mask), ("labels", labels)):
        for chunk in frame_to_chunks(tensor_to_frame(name, tensor), 40):
            assembler.feed(chunk)
    assert sorted(assembler.frames) == ["attention_mask", "labels"]


@pytest.mark.parametrize(
    ("mask_value", "label_value", "needle"),
    [
        (1, 258, None),  # the last id in the vocabulary
        (0, -100, None),  # ignored positions
        (-1, 5, "attention_mask: values must be 0 or 1"),
        (2, 5, "attention_mask: values must be 0 or 1"),
        (1, 259, "value 259 is neither -100 nor in [0, 259)"),
        (1, -1, "value -1 is neither -100 nor in [0, 259)"),
        (1, -101, "value -101 is neither"),
        # The int64 extremes: one bound check over the labels as unsigned.
        (1, -(2**63), f"value {-(2**63)} is neither"),
        (1, 2**63 - 1, f"value {2**63 - 1} is neither"),
    ],
)
def test_step_values_checked_without_grpc(mask_value: int, label_value: int, needle) -> None:
    mask = torch.ones(B, T, dtype=torch.int64)
    labels = torch.randint(3, 259, (B, T))
    mask[1, 3] = mask_value
    labels[1, 5] = label_value
    if needle is None:
        assemble_mask_and_labels(mask, labels)
        return
    with pytest.raises(WireError, match=re.escape(needle)):
        assemble_mask_and_labels(mask, labels)


@pytest.mark.parametrize(
    ("shape", "field"),
    [((9, T), "attention_mask.shape[0]"), ((B, T + 1), "attention_mask.shape[1]")],
)
def test_batch_and_sequence_limits_refused(shape: tuple[int, int], field: str) -> None:
    with pytest.raises(WireError) as info:
        assemble_mask_and_labels(torch.ones(shape, dtype=torch.int64), torch.zeros(shape).long())
    assert info.value.field == field
    assert "expected <=" in str(info.value)


@pytest.mark.parametrize(("kept_column", "refused"), [(0, True), (1, False)])
def test_step_without_a_token_to_predict_is_refused(kept_column: int, refused: bool) -> None:
    """The loss shifts labels by one: a batch whose only non-ignored labels sit in
    the first column predicts nothing and is refused; one in the second is fine."""
    mask = torch.ones(B, T, dtype=torch.int64)
    labels = torch.full((B, T), -100, dtype=torch.int64)
    labels[:, kept_column] = 7
    if not refused:
        assemble_mask_and_labels(mask, labels)
        return
    with pytest.raises(WireError, match="no token to predict"):
        assemble_mask_and_labels(mask, labels)


@pytest.mark.parametrize("ignored", [False, True])
def test_single_column_batch_has_no_token_to_predict(ignored: bool) -> None:
    """One column leaves nothing after the shift, whether or not any label is
    ignored; two columns do."""
    mask = torch.ones(B, 1, dtype=torch.int64)
    labels = torch.full((B, 1), 7, dtype=torch.int64)
    if ignored:
        labels[0, 0] = -100
    with pytest.raises(WireError, match="no token to predict"):
        assemble_mask_and_labels(mask, labels)
    assemble_mask_and_labels(torch.ones(B, 2, dtype=torch.int64), labels.repeat(1, 2))


class _Counted:
    """A request stream that counts the messages read from it."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages
        self.read = 0

    def __iter__(self) -> Iterator[Any]:
        for msg in self.messages:
            self.read += 1
            yield decode_train_request(msg)


@pytest.mark.parametrize(
    ("tensor", "bad", "needle"),
    [
        ("labels", 100000, "value 100000 is neither"),
        ("attention_mask", 7, "values must be 0 or 1"),
    ],
)
def test_bad_value_refused_before_the_activations_are_read(
    tensor: str, bad: int, needle: str
) -> None:
    """The client sends the mask and labels with the first activation chunk:
    the main server's reader refuses a bad value at that first message and
    reads none of the activations' later ones (before, it read the whole
    step and the service checked the values after)."""
    values = {
        "attention_mask": torch.ones(B, T, dtype=torch.int64),
        "labels": torch.randint(3, 259, (B, T)),
        "activations": torch.randn(B, T, D),
    }
    values[tensor][1, 2] = bad
    names = ("attention_mask", "labels", "activations")
    frames = [tensor_to_frame(name, values[name]) for name in names]
    header = StepHeaderInfo(round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=names)
    hello = TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32")
    parts = list(step_upload_requests(header, frames, chunk_bytes=1024))
    assert len(parts) > 4  # the activations' 8 KiB span several messages
    stream = _Counted([encode_train_request(m) for m in (hello, *parts)])
    uplink = read_uplink(stream, lambda _header: step_specs(VALUE_LIMITS))
    assert isinstance(next(uplink), TrainHelloInfo)
    with pytest.raises(WireError, match=re.escape(needle)):
        next(uplink)
    assert stream.read == 2, "the hello and the step's first message, nothing after"
