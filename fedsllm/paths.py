"""Output directories the commands write into, checked before anything is written.

Every command that takes an output path (run, sweep, compare, calibrate,
export) creates it through `writable_dir`, and every role its run or work
directory through `make_dir` (fedsllm.bootstrap.parse_dir), so an
unwritable or blocked path is one line naming the flag and the path (exit
code 2), never a traceback halfway through a run.

Input refused after that point (a bad adapter for export, a bind address in
use, a credential the fed server refuses) must leave the disk as it was: the
directories made here are remembered, and `remove_made_dirs` (called by the
CLI and by every role when they exit 2) takes back those still empty. Only
empty ones: a directory something was written into is a run's, and is kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedsllm.errors import ConfigError

_MADE: list[Path] = []
"""Directories this process created through make_dir, in creation order."""


def make_dir(path: str | Path) -> Path:
    """`path.mkdir(parents=True, exist_ok=True)`, remembering every directory it
    created (for remove_made_dirs). Raises OSError as mkdir does."""
    target = Path(path).absolute()
    missing = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    _MADE.extend(reversed(missing))  # parents first
    return target


def remove_made_dirs() -> None:
    """Remove the directories make_dir created that are still empty, deepest first
    (a parent goes only once its children went). Called when input is refused."""
    while _MADE:
        path = _MADE.pop()
        try:
            path.rmdir()
        except OSError:  # not empty (something was written), or already gone
            continue


def writable_dir(path: str | Path, field: str) -> Path:
    """Create `path` (with parents) and prove it takes a file; return it absolute.

    `field` is the flag or field the user set (``--out``), named in the error.
    The probe file is removed again, so a directory that was empty stays empty.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(field, str(target), "is a file, not a directory")
    try:
        make_dir(target)
        fd, probe = tempfile.mkstemp(prefix=".fedsllm-write-test-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(field, str(target), f"cannot write there ({reason})") from None
    return target.resolve()
