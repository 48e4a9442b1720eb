"""Atomic checkpoint of the global client adapter and the round number.

Written every round, so a restarted fed server resumes from the last
completed round instead of round 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    completed_round: int
    """Last round whose aggregate exists (-1 = none)."""
    adapter: bytes | None
    """Global client adapter (safetensors) after that round."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, completed_round: int, adapter: bytes) -> None:
    """Adapter files first, then checkpoint.json: a torn write leaves the old checkpoint."""
    adapters = run_dir / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    name = f"client_global_round{completed_round}.safetensors"
    _atomic_write(adapters / name, adapter)
    _atomic_write(adapters / "client_global.safetensors", adapter)
    meta = {"completed_round": completed_round, "adapter": f"adapters/{name}"}
    _atomic_write(run_dir / "checkpoint.json", json.dumps(meta).encode())


def save_server_adapter(run_dir: Path, round_index: int, final: bool, adapter: bytes) -> None:
    """The main server's adapter as it sent it: adapters/server_round{r}.safetensors
    at a checkpoint, and adapters/server.safetensors (the latest, and the final
    one at the end) either way."""
    adapters = run_dir / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    if not final and round_index >= 0:
        _atomic_write(adapters / f"server_round{round_index}.safetensors", adapter)
    _atomic_write(adapters / "server.safetensors", adapter)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    meta_path = run_dir / "checkpoint.json"
    if not meta_path.exists():
        return Checkpoint(completed_round=-1, adapter=None)
    meta = json.loads(meta_path.read_text())
    adapter = (run_dir / meta["adapter"]).read_bytes()
    return Checkpoint(completed_round=int(meta["completed_round"]), adapter=adapter)
