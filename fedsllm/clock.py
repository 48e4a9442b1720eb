"""One clock for a run spread over hosts: each process estimates its offset to the
fed server's clock (the reference) from request/response round trips, and
its tracer adds it to every timestamp.

Cristian's method: for a round trip sent at t0 and answered at t1 (local
clock) with the server's time ts, the server's clock read ts at about the
midpoint, so offset = ts - (t0 + t1) / 2, uncertain by +/- rtt / 2. The
sample with the smallest round trip is the tightest, so it is the one kept.
On one host the offset comes out near zero, and is still recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockOffset:
    offset_s: float
    """Add to the local clock to get the reference clock."""
    rtt_s: float
    """Round trip of the sample used; the offset is good to +/- rtt_s / 2."""
    num_samples: int


def offset_from_samples(samples: list[tuple[float, float, float]]) -> ClockOffset:
    """(t_send, t_server, t_receive) samples -> the offset of the tightest one."""
    if not samples:
        raise ValueError("need at least one (t_send, t_server, t_receive) sample")
    t0, ts, t1 = min(samples, key=lambda s: s[2] - s[0])
    return ClockOffset(offset_s=ts - (t0 + t1) / 2, rtt_s=t1 - t0, num_samples=len(samples))


def measure_offset(
    server_time: Callable[[], float], num_samples: int = 5, clock: Callable[[], float] = time.time
) -> ClockOffset:
    """Call `server_time()` (one RPC returning the reference clock) `num_samples` times."""
    samples = []
    for _ in range(num_samples):
        t0 = clock()
        ts = server_time()
        samples.append((t0, ts, clock()))
    return offset_from_samples(samples)
