"""Pure timing rules for reconnecting: backoff delays, link-aware timeouts, keepalive agreement.

- `backoff_delays`: capped exponential backoff with jitter, reproducible from
  a seed, for every client-side call that retries on UNAVAILABLE.
- `link_timeout_s`: a deadline that grows with the time the payload needs
  on the emulated link, so a slow link is not taken for a dead peer.
- `keepalive_problems`: checks that a channel's keepalive options are ones
  the server accepts (the "too many pings" GOAWAY of issue 10).

No gRPC import, no clock, no sleep: the caller (fedsllm/wire/rpc.py's retry
function, the client's links) does the waiting.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence

from fedsllm.errors import ConfigError


def backoff_delays(
    base_s: float, cap_s: float, jitter: float = 0.5, seed: int | None = 0
) -> Iterator[float]:
    """Seconds to wait before retry 1, 2, ...: an endless generator.

    Retry n (from 0) waits d_n = min(cap_s, base_s * 2**n), shortened by a
    random fraction of at most `jitter` of it: d_n * (1 - jitter * u), u
    uniform in [0, 1). jitter=0 gives the plain doubling; jitter=1 is "full
    jitter" (AWS architecture blog, "Exponential Backoff and Jitter"). Clients
    seeded differently (e.g. by client id) spread their reconnects after a
    server restart; the same seed gives the same delays. seed=None draws a
    fresh seed. Take as many as wanted: itertools.islice(delays, num_retries).
    """
    if not (math.isfinite(base_s) and base_s > 0):
        raise ConfigError("retry.base_s", base_s, "must be finite and > 0")
    if not (math.isfinite(cap_s) and cap_s >= base_s):
        raise ConfigError("retry.cap_s", cap_s, f"must be finite and >= base_s={base_s}")
    if not 0.0 <= jitter <= 1.0:
        raise ConfigError("retry.jitter", jitter, "must be in [0, 1]")
    rng = random.Random(seed)
    delay = base_s
    while True:
        yield delay * (1.0 - jitter * rng.random())
        delay = min(cap_s, delay * 2.0)


def link_timeout_s(
    payload_bytes: int, rate_bps: float | None, floor_s: float = 10.0, factor: float = 3.0
) -> float:
    """A deadline for moving `payload_bytes` over a link of `rate_bps` bit/s.

    max(floor_s, factor * 8 * payload_bytes / rate_bps): the floor covers
    latency, start-up and a busy peer; `factor` the headroom over the ideal
    transfer time (protocol overhead, a shared link, pacing). A rate of None
    or <= 0 means unshaped: the floor alone.
    """
    if payload_bytes < 0:
        raise ConfigError("payload_bytes", payload_bytes, "must be >= 0")
    if not (math.isfinite(floor_s) and floor_s > 0):
        raise ConfigError("timeout.floor_s", floor_s, "must be finite and > 0")
    if not (math.isfinite(factor) and factor >= 1.0):
        raise ConfigError("timeout.factor", factor, "must be finite and >= 1")
    if rate_bps is None or rate_bps <= 0:
        return floor_s
    return max(floor_s, factor * 8.0 * payload_bytes / rate_bps)


def _int(options: Mapping[str, object], key: str, default: int) -> int:
    value = options.get(key, default)
    return int(value) if isinstance(value, int | float | str) else default


def keepalive_problems(
    client_options: Sequence[tuple[str, object]] | Mapping[str, object],
    server_options: Sequence[tuple[str, object]] | Mapping[str, object],
) -> list[str]:
    """Why a server would cut this client off while it only waits (empty: it would not).

    A gRPC server answers pings that come more often than
    grpc.http2.min_ping_interval_without_data_ms (gRPC's default: 300000 ms; a
    "min_recv_..." name, which gRPC ignores, leaves that default) with
    GOAWAY "too_many_pings"; a client that pings an idle channel also needs
    the server to permit pings without calls.
    """
    client = dict(client_options)
    server = dict(server_options)
    if "grpc.keepalive_time_ms" not in client:
        return []  # the client sends no keepalive pings: nothing to refuse
    problems = []
    time_ms = _int(client, "grpc.keepalive_time_ms", 0)
    floor_ms = _int(server, "grpc.http2.min_ping_interval_without_data_ms", 300_000)
    if time_ms < floor_ms:
        problems.append(
            f"client keepalive_time_ms={time_ms} < server "
            f"min_ping_interval_without_data_ms={floor_ms}: too_many_pings"
        )
    if _int(client, "grpc.keepalive_permit_without_calls", 0) and not _int(
        server, "grpc.keepalive_permit_without_calls", 0
    ):
        problems.append(
            "the client pings without calls; the server does not set keepalive_permit_without_calls"
        )
    return problems
