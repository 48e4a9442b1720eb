"""`fedsllm run`'s output when nobody reads it any more: a pipe whose reader
exited (`| head`), a terminal that closed. The output is dropped and recorded;
the run is not ended by it (fedsllm.output.DroppingStream, LauncherOutput)."""

from __future__ import annotations

import os
import sys

from fedsllm.output import DroppingStream, LauncherOutput


def _orphaned_pipe() -> tuple[object, int]:
    """A text stream on the write end of a pipe whose read end is closed."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    return os.fdopen(write_fd, "w", buffering=1), write_fd


def test_a_write_to_a_pipe_without_reader_is_dropped_and_recorded() -> None:
    stream, fd = _orphaned_pipe()
    dropped: dict[str, str] = {}
    out = DroppingStream(stream, "stderr", dropped)
    try:
        assert out.write("first line\n") == len("first line\n")  # EPIPE: no exception
        out.flush()
        assert list(dropped) == ["stderr"] and "broken pipe" in dropped["stderr"]
        # Its descriptor is /dev/null now: the stream itself (as logging holds it)
        # and the flush at exit write without an error.
        assert os.path.samefile(f"/proc/self/fd/{fd}", os.devnull)
        stream.write("more\n")  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]
        assert out.write("later\n") == len("later\n")
    finally:
        stream.close()  # type: ignore[attr-defined]


def test_probe_notices_a_reader_gone_before_any_write() -> None:
    """`fedsllm run | head -1` closes stdout long before its one line: the loss is
    noticed (and recorded while the roles run) without a write."""
    stream, fd = _orphaned_pipe()
    dropped: dict[str, str] = {}
    out = DroppingStream(stream, "stdout", dropped)
    try:
        out.probe()
        assert list(dropped) == ["stdout"]
        assert os.path.samefile(f"/proc/self/fd/{fd}", os.devnull)
    finally:
        stream.close()  # type: ignore[attr-defined]


def test_a_stream_with_a_reader_is_left_alone() -> None:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", buffering=1)
    dropped: dict[str, str] = {}
    out = DroppingStream(stream, "stdout", dropped)
    try:
        out.probe()
        out.write("seen\n")
        assert dropped == {}
        assert os.read(read_fd, 100) == b"seen\n"
        assert out.fileno() == write_fd  # everything else is the stream's
    finally:
        stream.close()
        os.close(read_fd)


def test_launcher_output_wraps_and_restores_the_standard_streams() -> None:
    before = (sys.stdout, sys.stderr)
    with LauncherOutput() as output:
        assert isinstance(sys.stdout, DroppingStream)
        assert isinstance(sys.stderr, DroppingStream)
        output.probe()  # a test's captured streams: nothing gone
        assert output.dropped == {}
    assert (sys.stdout, sys.stderr) == before
