"""The run directory's view of the global client adapter and the round number.

RUN_DIR/adapters/client_global*.safetensors and RUN_DIR/checkpoint.json are
written every round for their readers (fedsllm/model/export.py, the report,
the tests). They are not what a restarted fed server resumes from: that is
its store, RUN_DIR/state (fed_server/rounds.py), committed first; RoundState
rewrites these files from it when a crash left them behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedsllm.state.format import atomic_write


@dataclass(frozen=True)
class Checkpoint:
    completed_round: int
    """Last round whose aggregate exists (-1 = none)."""
    adapter: bytes | None
    """Global client adapter (safetensors) after that round."""


def save_checkpoint(run_dir: Path, completed_round: int, adapter: bytes) -> None:
    """Adapter files first, then checkpoint.json: a torn write leaves the old checkpoint."""
    adapters = run_dir / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    name = f"client_global_round{completed_round}.safetensors"
    atomic_write(adapters / name, adapter)
    atomic_write(adapters / "client_global.safetensors", adapter)
    meta = {"completed_round": completed_round, "adapter": f"adapters/{name}"}
    atomic_write(run_dir / "checkpoint.json", json.dumps(meta).encode())


def save_server_adapter(run_dir: Path, round_index: int, final: bool, adapter: bytes) -> None:
    """The main server's adapter as it sent it: adapters/server_round{r}.safetensors
    at a checkpoint, and adapters/server.safetensors (the latest, and the final
    one at the end) either way."""
    adapters = run_dir / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    if not final and round_index >= 0:
        atomic_write(adapters / f"server_round{round_index}.safetensors", adapter)
    atomic_write(adapters / "server.safetensors", adapter)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    meta_path = run_dir / "checkpoint.json"
    if not meta_path.exists():
        return Checkpoint(completed_round=-1, adapter=None)
    meta = json.loads(meta_path.read_text())
    adapter = (run_dir / meta["adapter"]).read_bytes()
    return Checkpoint(completed_round=int(meta["completed_round"]), adapter=adapter)
