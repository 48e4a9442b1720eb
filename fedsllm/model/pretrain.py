"""Short, cached base pretraining of a tiny preset model on generic text.

A randomly initialised frozen base leaves LoRA little to adapt, so before
fine-tuning, a tiny preset is trained (all parameters, AdamW, constant
learning rate after a short warmup) on `fedsllm.data.generic` text,
byte-tokenized and packed into full-length blocks. The result depends only
on the preset config, vocabulary, seed, steps, learning rate, block length
and corpus version, so it is computed once and cached as safetensors under
``$FEDSLLM_CACHE`` (default ``~/.cache/fedsllm``), keyed by a hash of those.

Several processes of a run start at once and all need the same weights:
an exclusive `fcntl.flock` on a per-key lock file lets exactly one of them
train while the others wait, and the file is written to a temporary name
and moved into place with `os.replace`, so a reader never sees half a file.
Which presets get pretrained is decided in build.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CORPUS_VERSION = "generic-v1"
"""Bump when fedsllm.data.generic or the packing below changes: old caches go stale."""

PRETRAIN_BATCH_SIZE = 16
"""Blocks per pretraining step."""

MAX_BLOCK_LEN = 128
"""Longest pretraining block: attention cost grows with T^2, and the default
fine-tuning length (256) would make a cold start take over a minute here.
Llama's rotary positions are relative, so 128-token blocks carry over."""

WARMUP_STEPS = 20
"""Linear learning-rate warmup steps (capped at a tenth of the run)."""

StepCallback = Callable[[int, int, float], None]
"""Called after every pretraining step with (steps done, steps in all, loss), so a
launcher can show what the first, slow start of a run is doing."""


@dataclass(frozen=True, slots=True)
class PretrainResult:
    """What `pretrain_base` did; losses are NaN when the cache was hit."""

    cache_path: Path
    cache_hit: bool
    first_loss: float
    last_loss: float
    seconds: float


def cache_dir() -> Path:
    """$FEDSLLM_CACHE, or ~/.cache/fedsllm; created on demand."""
    root = os.environ.get("FEDSLLM_CACHE") or str(Path.home() / ".cache" / "fedsllm")
    return Path(root).expanduser()


def pretrain_key(
    model_config: Any, vocab_size: int, seed: int, steps: int, lr: float, seq_len: int
) -> str:
    """Hash of everything that determines the pretrained weights."""
    cfg = model_config.to_dict()
    cfg.pop("transformers_version", None)
    cfg.pop("_name_or_path", None)
    payload = {
        "config": cfg,
        "attn_implementation": getattr(model_config, "_attn_implementation", None),
        "vocab_size": vocab_size,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "seq_len": seq_len,
        "batch_size": PRETRAIN_BATCH_SIZE,
        "warmup_steps": WARMUP_STEPS,
        "corpus": CORPUS_VERSION,
        "torch": torch.__version__.split("+")[0],
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def pack_texts(texts: list[str], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """Token blocks (N, seq_len): each text as bos + bytes + eos, concatenated and cut.

    Packing wastes no compute on padding; a trailing partial block is dropped.
    """
    ids: list[int] = []
    for text in texts:
        ids.append(tokenizer.bos_id)
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_id)
    num_blocks = len(ids) // seq_len
    return torch.tensor(ids[: num_blocks * seq_len], dtype=torch.long).view(num_blocks, seq_len)


def corpus_blocks(num_blocks: int, seq_len: int, seed: int) -> torch.Tensor:
    """At least `num_blocks` packed blocks of generic text drawn with `seed`."""
    from fedsllm.data.generic import generic_texts
    from fedsllm.data.tokenizer import ByteTokenizer

    tokenizer = ByteTokenizer()
    num_texts = max(16, num_blocks * seq_len // 80 + 16)
    while True:
        blocks = pack_texts(generic_texts(num_texts, seed), tokenizer, seq_len)
        if blocks.shape[0] >= num_blocks:
            return blocks[:num_blocks]
        num_texts *= 2


@torch.no_grad()
def mean_loss(model: Any, blocks: torch.Tensor, batch_size: int = PRETRAIN_BATCH_SIZE) -> float:
    """Mean next-token loss of `model` over packed blocks (eval mode restored after)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start : start + batch_size]
        out = model(input_ids=batch, labels=batch)
        total += out.loss.item() * batch.shape[0]
        count += batch.shape[0]
    model.train(was_training)
    return total / max(count, 1)


def train_base(
    model: Any,
    steps: int,
    lr: float,
    seq_len: int,
    seed: int,
    on_step: StepCallback | None = None,
) -> tuple[float, float]:
    """Train every parameter of `model` for `steps` AdamW steps; returns (first, last) loss.

    Runs under `torch.manual_seed(seed)` inside a forked RNG so the caller's
    random stream is not disturbed. Leaves the model in eval mode.
    """
    blocks = corpus_blocks(steps * PRETRAIN_BATCH_SIZE, seq_len, seed)
    warmup = max(1, min(WARMUP_STEPS, steps // 10))
    first = last = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(blocks.shape[0])
        model.requires_grad_(True)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        for step in range(steps):
            batch = blocks[order[step * PRETRAIN_BATCH_SIZE : (step + 1) * PRETRAIN_BATCH_SIZE]]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            last = loss.item()
            if step == 0:
                first = last
            if on_step is not None:
                on_step(step + 1, steps, last)
            if step % 100 == 0 or step == steps - 1:
                log.debug("pretrain step %d/%d loss %.4f", step + 1, steps, last)
    model.requires_grad_(False)
    model.eval()
    return first, last


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _try_load(model: Any, path: Path) -> bool:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if not path.is_file():
        return False
    try:
        missing, unexpected = load_model(model, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        log.warning("ignoring unreadable pretrain cache %s (%s); retraining", path, err)
        return False
    return not missing and not unexpected


def _save_atomic(model: Any, path: Path) -> None:
    from safetensors.torch import save_model

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pretrain_base(
    model: Any, scenario: Any, vocab_size: int, on_step: StepCallback | None = None
) -> PretrainResult:
    """Load the cached pretrained weights into `model`, training and caching them first
    if no process has yet. The model ends in eval mode with whatever requires_grad
    it had turned off (build.py freezes it anyway). `on_step` sees every training
    step (none on a cache hit)."""
    steps = scenario.model.pretrain_steps
    lr = scenario.model.pretrain_lr
    seq_len = min(scenario.data.seq_len, MAX_BLOCK_LEN)
    key = pretrain_key(model.config, vocab_size, scenario.seed, steps, lr, seq_len)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"base-{scenario.model.preset}-{key}.safetensors"
    start = time.perf_counter()
    if _try_load(model, path):
        log.info("pretrained base loaded from cache %s", path)
        model.eval()
        return PretrainResult(path, True, float("nan"), float("nan"), time.perf_counter() - start)
    with _exclusive(root / f"base-{key}.lock"):
        # Another process may have finished while this one waited for the lock.
        if _try_load(model, path):
            log.info("pretrained base loaded from cache %s (after waiting)", path)
            model.eval()
            return PretrainResult(
                path, True, float("nan"), float("nan"), time.perf_counter() - start
            )
        log.info(
            "pretraining %s base: %d steps, lr %g, batch %d x %d tokens (seed %d)",
            scenario.model.preset,
            steps,
            lr,
            PRETRAIN_BATCH_SIZE,
            seq_len,
            scenario.seed,
        )
        first, last = train_base(model, steps, lr, seq_len, scenario.seed, on_step)
        _save_atomic(model, path)
    seconds = time.perf_counter() - start
    log.info(
        "pretrained base in %.1f s: loss %.3f -> %.3f; cached at %s", seconds, first, last, path
    )
    return PretrainResult(path, False, first, last, seconds)
