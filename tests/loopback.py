"""A server on a free loopback port for a test, and a channel to it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import grpc

from fedsllm.wire.rpc import create_server, make_channel, stop_server


@contextlib.contextmanager
def serving(
    register: Callable[[grpc.Server], None], grace_s: float = 0.5
) -> Iterator[grpc.Channel]:
    """A channel to a server that `register` fills (e.g. ``lambda s:
    add_MainServerServicer_to_server(servicer, s)``), without credentials,
    on a free loopback port; the channel is closed and the server stopped
    afterwards, also when the test fails."""
    server, port = create_server("127.0.0.1:0", [register], allow_unauthenticated=True)
    try:
        with make_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        stop_server(server, grace_s=grace_s)
