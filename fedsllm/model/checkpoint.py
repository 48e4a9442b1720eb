"""The local checkpoint a scenario's model.path names, checked once for every reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError


def checkpoint_dir(scenario: Any) -> str:
    """scenario.model.path when it is a directory; ConfigError naming model.path
    otherwise. transformers takes a path that does not exist for a hub repo id
    and answers about the id's spelling, which is no help to the user."""
    path = scenario.model.path
    if not Path(path).is_dir():
        raise ConfigError("model.path", path, "no such directory (a local checkpoint)")
    return path
