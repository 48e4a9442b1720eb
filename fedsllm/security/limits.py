"""Per-peer limits a server enforces: concurrent streams and call rate.

A peer is the identity the channel gave the call (fedsllm.security.identity);
on a server built with allow_unauthenticated (unit tests), the gRPC peer
address. Going past a limit raises ResourceLimitError (RESOURCE_EXHAUSTED in
fedsllm.wire.status) before the handler touches any state. Message size is
capped by the channel options (fedsllm.wire.rpc.MAX_MESSAGE_BYTES) and, for
blobs, by the assemblers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fedsllm.errors import ResourceLimitError

DEFAULT_MAX_STREAMS = 4
"""Concurrent streams one peer may hold per method (a client needs one Train
stream, one push or pull at a time; a few spare for a reconnect)."""
DEFAULT_RATE = 30
DEFAULT_RATE_WINDOW_S = 10.0
"""At most DEFAULT_RATE Join/Register calls per peer per window (a client joins
once per run, plus retries)."""


@dataclass
class PeerLimits:
    """Stream counts and call rates per (method, peer); thread-safe."""

    max_streams: int = DEFAULT_MAX_STREAMS
    rate: int = DEFAULT_RATE
    rate_window_s: float = DEFAULT_RATE_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _open: dict[tuple[str, Hashable], int] = field(default_factory=dict, repr=False)
    _calls: dict[tuple[str, Hashable], deque[float]] = field(default_factory=dict, repr=False)

    @contextmanager
    def stream(self, method: str, peer: Hashable) -> Iterator[None]:
        """Hold one of `peer`'s `max_streams` slots of `method` for the block."""
        key = (method, peer)
        with self._lock:
            held = self._open.get(key, 0)
            if held >= self.max_streams:
                raise ResourceLimitError(
                    f"{method} streams per peer",
                    f"{peer} already holds {held}, the limit is {self.max_streams}",
                )
            self._open[key] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._open[key] - 1
                if left:
                    self._open[key] = left
                else:
                    del self._open[key]

    def stream_for_call(self, method: str, peer: Hashable, context: Any) -> bool:
        """Hold one of `peer`'s slots of `method` until the gRPC call of `context`
        ends, however it ends: a server-streaming handler is a generator, whose own
        `finally` would run only when it is collected. ResourceLimitError past the
        limit; False, with the slot given back, when the call had already ended."""
        slot = self.stream(method, peer)
        slot.__enter__()
        if context.add_callback(lambda: slot.__exit__(None, None, None)):
            return True
        slot.__exit__(None, None, None)  # already over: no callback will come
        return False

    def check_rate(self, method: str, peer: Hashable) -> None:
        """Count one call of `method` by `peer`; ResourceLimitError past `rate`
        per `rate_window_s` (a refused call is not counted)."""
        key = (method, peer)
        now = self.clock()
        with self._lock:
            calls = self._calls.setdefault(key, deque())
            while calls and now - calls[0] > self.rate_window_s:
                calls.popleft()
            if len(calls) >= self.rate:
                raise ResourceLimitError(
                    f"{method} rate per peer",
                    f"{peer} made {len(calls)} calls in {self.rate_window_s:g} s, "
                    f"the limit is {self.rate}",
                )
            calls.append(now)

    def snapshot(self) -> dict[tuple[str, Hashable], int]:
        """Streams held now (tests check a refused call leaves none behind)."""
        with self._lock:
            return dict(self._open)


def peer_key(identity: Hashable | None, context: object) -> Hashable:
    """Whose limits a call counts against: its identity, or on a server built
    with allow_unauthenticated (unit tests) the transport peer (``ipv4:127.0.0.1:51234``)."""
    if identity is not None:
        return identity
    peer = getattr(context, "peer", None)
    return peer() if callable(peer) else "unknown peer"
