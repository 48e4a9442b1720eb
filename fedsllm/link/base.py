"""The one interface every link-shaping backend implements.

A `Shaper` emulates, per client and per direction, a link of a given rate.
Direction.UP carries what a client sends (smashed activations, labels,
adapter uploads); Direction.DOWN what it receives (activation gradients, the
global adapter). Rates change live, as allocation pushes arrive. A rate of 0
or infinity means unshaped. Backends: `fedsllm.link.token` (in-process pacing,
no privileges) and `fedsllm.link.netns` / `fedsllm.link.tc` (kernel htb in
network namespaces). The channel model that turns bandwidth shares into rates
lives elsewhere (fedsllm/link/channel.py).
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from fedsllm.errors import LinkError

T = TypeVar("T")


class Direction(enum.Enum):
    """Which way a payload travels, seen from the client."""

    UP = "up"
    """Client -> servers: activations, labels, adapter uploads."""
    DOWN = "down"
    """Servers -> client: activation gradients, loss, the global adapter."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkStats:
    """What one (client, direction) link carried, in emulated time.

    Times are divided by the time dilation, so they read as on the emulated
    link whatever stretch the run used.
    """

    num_bytes: int
    """Payload bytes handed to the link."""
    num_chunks: int
    """Calls to `Shaper.pace` (chunks)."""
    busy_s: float
    """Measured seconds the link spent transmitting shaped chunks (from each
    chunk's scheduled start to when the sender was released), undilated.
    0 for a backend that cannot see it (tc)."""
    shaped_bytes: int
    """Bytes sent while the link had a finite rate (the ones `busy_s` covers)."""

    @property
    def achieved_bps(self) -> float:
        """Measured rate of the shaped bytes, bit/s; NaN when nothing was shaped."""
        if self.busy_s <= 0:
            return math.nan
        return self.shaped_bytes * 8 / self.busy_s


def check_rate(name: str, rate_bps: float) -> float:
    """Validate a rate and normalise 'unshaped' (0 or inf) to math.inf.

    Raises LinkError naming `name` for a negative or NaN rate, so a bad
    allocation push fails loudly instead of freezing or flooding a link.
    """
    try:
        value = float(rate_bps)
    except (TypeError, ValueError):
        raise LinkError(f"{name} must be a number of bit/s, got {rate_bps!r}") from None
    if math.isnan(value) or value < 0:
        raise LinkError(f"{name} must be >= 0 bit/s (0 or inf = unshaped), got {rate_bps!r}")
    if value == 0:
        return math.inf
    return value


def check_client_id(client_id: int) -> int:
    """Reject a client id that is not a non-negative int (bool excluded)."""
    if not isinstance(client_id, int) or isinstance(client_id, bool) or client_id < 0:
        raise LinkError(f"client_id must be an int >= 0, got {client_id!r}")
    return client_id


class Shaper(ABC):
    """Per-client, per-direction link emulation with live rate changes.

    Senders call `pace` before handing each chunk to the transport; the
    backend decides whether that call blocks (token) or the kernel does the
    waiting (tc). Implementations are thread-safe: a server paces many client
    streams from many threads.
    """

    @abstractmethod
    def set_rates(self, client_id: int, up_bps: float, down_bps: float) -> None:
        """Set client `client_id`'s uplink and downlink rates, bit/s (0 or inf
        = unshaped). Takes effect at the next chunk; raises LinkError on a bad
        rate without changing anything."""

    @abstractmethod
    def rates(self, client_id: int) -> tuple[float, float]:
        """Current (up_bps, down_bps) of a client; inf = unshaped."""

    @abstractmethod
    def pace(
        self, client_id: int, direction: Direction, nbytes: int, *, new_message: bool = False
    ) -> None:
        """Account for (and, where the backend paces in-process, wait for) a
        chunk of `nbytes` about to be sent. `new_message` marks the first
        chunk of a payload, which carries the one-way propagation delay."""

    @abstractmethod
    def stats(self) -> dict[tuple[int, Direction], LinkStats]:
        """Counters per (client, direction) seen so far."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds (nothing by default)."""


def paced(
    chunks: Iterable[T],
    shaper: Shaper,
    client_id: int,
    direction: Direction,
    size_of: Callable[[T], int] = len,  # type: ignore[assignment]
) -> Iterator[T]:
    """Yield `chunks` unchanged, pacing each one before it is yielded.

    Use it as the request iterator of a gRPC stream (or wrap a response
    generator). Pacing happens before the yield on purpose: once a chunk is
    handed to gRPC it may sit in HTTP/2 flow-control windows and socket
    buffers that absorb hundreds of KiB at once, so a shaper that released
    bytes first and slept afterwards would let a whole payload through
    early. Holding the chunk back until its virtual transmission has ended
    means no buffer downstream can make it arrive before its emulated time.
    The first chunk is flagged `new_message` so the propagation delay is
    charged once per payload.
    """
    first = True
    for chunk in chunks:
        shaper.pace(client_id, direction, size_of(chunk), new_message=first)
        first = False
        yield chunk
