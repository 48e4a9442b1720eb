"""The output directory of a multi-run experiment (each run gets its own subdirectory)."""

from __future__ import annotations

import time
from pathlib import Path

from fedsllm.errors import ConfigError


def fresh_out_dir(out: str | Path | None, stem: str) -> Path:
    """OUT itself when given (must be absent or an empty directory), else runs/<stem>-<timestamp>.

    The runs below it are created by fedsllm.launch.make_run_dir, which refuses
    non-empty directories too, so a half-reused OUT is caught before any run.
    """
    if out:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError("--out", str(path), "exists and is not an empty directory")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stem}-{stamp}"
        suffix = 1
        while path.exists():
            path = Path("runs") / f"{stem}-{stamp}-{suffix}"
            suffix += 1
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
