"""The launcher's standard streams while `fedsllm run` runs: output nobody can
read any more is dropped, never fatal to the run.

`fedsllm run 2>&1 | head` or a closed terminal used to end the launcher at its
next print (rich exits on a broken pipe), with the roles stopped and the launch
unrecorded. LauncherOutput wraps sys.stdout and sys.stderr in DroppingStreams
for the run, and says which were dropped and why (RUN_DIR/faults.json,
output_dropped).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import sys
from types import TracebackType
from typing import Any


class DroppingStream:
    """sys.stdout or sys.stderr of `fedsllm run`: output nobody can read any more
    is dropped, never fatal to the run.

    A write to a pipe whose reader has exited (`fedsllm run 2>&1 | head`) fails
    with EPIPE, and one to a terminal that was closed with EIO; the first used to
    end the launcher at its next print (rich exits on a broken pipe), with the
    roles stopped and the launch unrecorded. Here the first failed write, or
    `probe` finding the reader gone, points the stream's file descriptor at
    /dev/null, so that every later write of this process (print, rich, logging,
    the flush at exit) succeeds and goes nowhere, and records why in `dropped`
    (RUN_DIR/faults.json, output_dropped). Anything else is the wrapped stream's.
    """

    def __init__(self, stream: Any, name: str, dropped: dict[str, str]) -> None:
        self._stream = stream
        self._name = name
        self._dropped = dropped

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._stream, attr)

    @property
    def gone(self) -> bool:
        return self._name in self._dropped

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return int(self._stream.write(text))
            except OSError as err:
                self.drop(_why_gone(err.errno))
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            self.drop(_why_gone(err.errno))

    def probe(self) -> None:
        """Drop the output now if its reader is gone, before a write finds out: a
        pipe with no reader polls as POLLERR, a hung-up terminal as POLLHUP."""
        fd = self._fileno()
        if self.gone or fd is None:
            return
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        for _fd, events in poller.poll(0):
            if events & select.POLLERR:
                self.drop(_why_gone(errno.EPIPE))
            elif events & select.POLLHUP:
                self.drop(_why_gone(errno.EIO))

    def drop(self, why: str) -> None:
        if self.gone:
            return
        self._dropped[self._name] = why
        fd = self._fileno()
        if fd is None:
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what it still holds goes to /dev/null now

    def _fileno(self) -> int | None:
        try:
            return int(self._stream.fileno())
        except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture)
            return None


def _why_gone(code: int | None) -> str:
    """What faults.json says of a stream whose write failed with errno `code`."""
    if code == errno.EPIPE:
        return "broken pipe (its reader exited); later output dropped"
    if code == errno.EIO:
        return "I/O error (its terminal is gone); later output dropped"
    name = errno.errorcode.get(code or 0, "unknown error")
    return f"{os.strerror(code) if code else 'write failed'} ({name}); later output dropped"


class LauncherOutput:
    """sys.stdout and sys.stderr as DroppingStreams while `fedsllm run` runs, and
    which of them were dropped (`dropped`, name -> why): a run outlives a reader
    that went away (`| head`, a closed terminal), and its records say so."""

    def __init__(self) -> None:
        self.dropped: dict[str, str] = {}
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> LauncherOutput:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None:
                self._saved[name] = stream
                setattr(sys, name, DroppingStream(stream, name, self.dropped))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name, stream in self._saved.items():
            setattr(sys, name, stream)

    def probe(self) -> None:
        """Notice a reader gone since the last write (DroppingStream.probe)."""
        for name in self._saved:
            stream = getattr(sys, name)
            if isinstance(stream, DroppingStream):
                stream.probe()
