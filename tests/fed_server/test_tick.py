"""The fed server's main loop (fedsllm.roles.wait_for_stop): a tick that fails
(poll_deadline meeting a broken store, a bug) is logged and retried; the
process keeps serving."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from fedsllm.roles import ROLE_STOP, wait_for_stop


@pytest.fixture
def stop_signals() -> Iterator[None]:
    """wait_for_stop installs SIGTERM/SIGINT handlers: put the previous ones back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ROLE_STOP.clear()
    yield
    ROLE_STOP.clear()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_tick_that_raises_is_logged_and_the_next_one_runs(stop_signals, caplog) -> None:
    calls: list[int] = []

    def tick() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise OSError("no space left on device")
        if len(calls) == 3:
            ROLE_STOP.set()  # SIGTERM, as the launcher sends it

    with caplog.at_level(logging.ERROR, logger="fedsllm.roles"):
        wait_for_stop(every_s=0.001, tick=tick)  # returns only once stopped
    assert calls == [0, 1, 2]
    (failed,) = [r for r in caplog.records if "tick failed" in r.getMessage()]
    assert failed.exc_info is not None and "no space" in str(failed.exc_info[1])
