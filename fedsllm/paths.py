"""Output directories the commands write into, checked before anything is written.

Every command that takes an output path (run, sweep, compare, calibrate,
export) creates it through `writable_dir`, so an unwritable or blocked path
is one line naming the flag and the path (exit code 2), never a traceback
halfway through a run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedsllm.errors import ConfigError


def writable_dir(path: str | Path, field: str) -> Path:
    """Create `path` (with parents) and prove it takes a file; return it absolute.

    `field` is the flag or field the user set (``--out``), named in the error.
    The probe file is removed again, so a directory that was empty stays empty.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(field, str(target), "is a file, not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fedsllm-write-test-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(field, str(target), f"cannot write there ({reason})") from None
    return target.resolve()
