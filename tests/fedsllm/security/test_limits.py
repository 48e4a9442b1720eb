"""PeerLimits.stream_for_call: a streaming call's slot is held until the call
ends, whichever way (the telemetry's and the controller's Subscribe use it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedsllm.errors import ResourceLimitError
from fedsllm.security.limits import PeerLimits


class _Call:
    """A grpc.ServicerContext as far as callbacks go: `ended` is whether the call
    was already over when the handler asked (add_callback then refuses)."""

    def __init__(self, ended: bool = False) -> None:
        self.ended = ended
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.ended:
            return False
        self.callbacks.append(callback)
        return True

    def end(self) -> None:
        for callback in self.callbacks:
            callback()


def test_a_slot_is_held_until_its_call_ends_and_refused_past_the_limit() -> None:
    limits = PeerLimits(max_streams=2)
    first, second = _Call(), _Call()
    assert limits.stream_for_call("Subscribe", "watcher", first)
    assert limits.stream_for_call("Subscribe", "watcher", second)
    with pytest.raises(ResourceLimitError, match="watcher already holds 2, the limit is 2"):
        limits.stream_for_call("Subscribe", "watcher", _Call())
    assert limits.stream_for_call("Subscribe", "launcher", _Call())  # per peer
    first.end()
    assert limits.stream_for_call("Subscribe", "watcher", _Call())


def test_a_call_already_over_gives_its_slot_back_at_once() -> None:
    limits = PeerLimits(max_streams=1)
    assert not limits.stream_for_call("Subscribe", "watcher", _Call(ended=True))
    assert limits.stream_for_call("Subscribe", "watcher", _Call())
