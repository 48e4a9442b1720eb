"""Fixtures for the wire tests: a real gRPC server on port 0 running the echo
MainServer, stopped by its own handle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedsllm.proto import main_server_pb2_grpc
from fedsllm.wire import rpc

from ._echo import EchoMainServer


@pytest.fixture
def echo_server() -> Iterator[str]:
    server, port = rpc.create_server(
        "127.0.0.1:0",
        [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(EchoMainServer(), s)],
        service_names=[rpc.MAIN_SERVER_SERVICE],
        max_workers=4,
        allow_unauthenticated=True,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        rpc.stop_server(server, grace_s=0.5)
