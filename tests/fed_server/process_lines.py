"""Following a role process's output line by line, in the fed server's process
tests: a reader thread per stream, and a wait for a line that matches."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterable

HANG_GUARD_S = 180.0
"""How long a line may take to come before the test fails (a hang guard, not a speed target)."""


def read_lines(stream: Iterable[str]) -> queue.Queue[str]:
    """A queue fed with `stream`'s lines by a daemon thread; "" at its end."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # EOF

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """The first line (appended to `seen`, like every line before it) that `pattern`
    matches; AssertionError with the last lines when the process ended first."""
    while True:
        line = lines.get(timeout=HANG_GUARD_S)
        seen.append(line)
        if not line:
            raise AssertionError("process ended early:\n" + "".join(seen[-40:]))
        found = re.search(pattern, line)
        if found:
            return found
