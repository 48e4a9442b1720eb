"""Helpers for tests that run `fedsllm run` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "policy.name='fixed_steps'",
    "link.backend='none'",
    "link.emulate_compute=false",
    "training.eval_every=1",
    "model.pretrain_steps=0",
    "data.seq_len=32",
    "data.num_train_samples=96",
    "data.num_val_samples=16",
    "training.batch_size=4",
    "training.num_val_batches=2",
]
"""Overrides that make a run take seconds: tiny random base, short sequences, no
controller and no emulation (tests that want them override these)."""


def fedsllm(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "fedsllm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def overrides(*items: str) -> list[str]:
    out: list[str] = []
    for item in (*TINY, *items):
        out += ["--set", item]
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FEDSLLM_CACHE", str(path))
    return path
