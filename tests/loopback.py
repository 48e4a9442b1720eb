"""A server on a free loopback port for a test, and a channel to it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import grpc

from fedsllm.wire.rpc import create_server, make_channel, stop_server


@contextlib.contextmanager
def serving_address(register: Callable[[grpc.Server], None], grace_s: float = 0.5) -> Iterator[str]:
    """The address of a server that `register` fills (e.g. ``lambda s:
    add_MainServerServicer_to_server(servicer, s)``), without credentials,
    on a free loopback port; the server is stopped afterwards, also when the
    test fails."""
    server, port = create_server("127.0.0.1:0", [register], allow_unauthenticated=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_server(server, grace_s=grace_s)


@contextlib.contextmanager
def serving(
    register: Callable[[grpc.Server], None], grace_s: float = 0.5
) -> Iterator[grpc.Channel]:
    """A channel to a server as serving_address's; the channel is closed
    and the server stopped afterwards."""
    with serving_address(register, grace_s) as address, make_channel(address) as channel:
        yield channel


def main_server_address(servicer: object) -> contextlib.AbstractContextManager[str]:
    """serving_address for a MainServer servicer (a stand-in main server)."""
    from fedsllm.proto import main_server_pb2_grpc

    return serving_address(
        lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(servicer, s)
    )
