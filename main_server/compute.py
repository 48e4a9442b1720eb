"""Server-side forward, loss, backward and LoRA step for one client batch.

One shared server adapter serves every client stream; a lock serializes the
updates (docs/MODEL.md section 1, server_update = per_batch), or, in `wave` mode,
gradients of `wave_size` batches are averaged into one step. Evaluation
batches take the lock too, so they see a consistent adapter. This module
knows nothing of gRPC.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from fedsllm.data.dataset import IGNORE_INDEX


@dataclass(frozen=True)
class ServerStepResult:
    loss: float
    """Mean token cross-entropy of the batch."""
    num_tokens: int
    """Tokens that counted in the loss (labels != IGNORE_INDEX, after the shift)."""
    grad_hidden: torch.Tensor | None
    """d loss / d activations, same shape as the activations; None in eval."""
    compute_s: float
    """Wall seconds spent in forward + backward + step (lock wait excluded)."""


class ServerTrainer:
    def __init__(
        self,
        server_part: torch.nn.Module,
        *,
        lr: float,
        update: str = "per_batch",
        wave_size: int = 1,
    ) -> None:
        self.part = server_part
        self.params = [p for p in server_part.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        self.update = update
        self.wave_size = max(1, wave_size)
        self._lock = threading.Lock()
        self._batches_in_wave = 0
        self.num_updates = 0
        self._initial = [p.detach().clone() for p in self.params]
        """The adapter before any update, for "before training" evaluations."""

    def train_step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> ServerStepResult:
        hidden = hidden.detach().requires_grad_(True)
        with self._lock:
            t0 = time.perf_counter()
            self.part.train()
            if self.update == "per_batch" or self._batches_in_wave == 0:
                self.optimizer.zero_grad(set_to_none=True)
            _, loss = self.part(hidden, attention_mask, labels)
            scale = 1.0 if self.update == "per_batch" else 1.0 / self.wave_size
            (loss * scale).backward()
            self._batches_in_wave += 1
            if self.update == "per_batch" or self._batches_in_wave >= self.wave_size:
                self.optimizer.step()
                self._batches_in_wave = 0
                self.num_updates += 1
            compute_s = time.perf_counter() - t0
        grad = hidden.grad
        if grad is None:  # pragma: no cover - the server part always depends on its input
            raise RuntimeError("server part did not propagate a gradient to its input")
        if self.update != "per_batch":
            grad = grad / scale  # the client sees its own batch's gradient, unscaled
        return ServerStepResult(float(loss.detach()), num_loss_tokens(labels), grad, compute_s)

    @torch.no_grad()
    def eval_step(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        initial_adapter: bool = False,
    ) -> ServerStepResult:
        """Loss without an update; `initial_adapter` evaluates the adapter as it was
        before training (swapped in, and back, under the lock)."""
        with self._lock:
            t0 = time.perf_counter()
            self.part.eval()
            saved = None
            if initial_adapter:
                saved = [p.detach().clone() for p in self.params]
                for p, init in zip(self.params, self._initial, strict=True):
                    p.copy_(init)
            try:
                _, loss = self.part(hidden, attention_mask, labels)
            finally:
                if saved is not None:
                    for p, value in zip(self.params, saved, strict=True):
                        p.copy_(value)
            compute_s = time.perf_counter() - t0
        return ServerStepResult(float(loss), num_loss_tokens(labels), None, compute_s)

    def adapter_bytes(self, to_bytes: Any) -> bytes:
        """Serialize the adapter under the lock so no update is half-applied."""
        with self._lock:
            return to_bytes(self.part)


def num_loss_tokens(labels: torch.Tensor) -> int:
    """Tokens the shifted causal-LM loss counts (labels after the first != ignore)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
