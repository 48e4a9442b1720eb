"""Servers built by fedsllm.wire.rpc.create_server with explicit credentials
(no per-process state): a server with neither TLS nor tokens refuses every call
but health checks with UNAUTHENTICATED, and message ids are trusted only on a
server built with allow_unauthenticated=True; two servers of one process keep
their own credentials."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedsllm.security.identity import (
    AuthenticationError,
    Identity,
    TokenTable,
    authorize,
    calling_as,
)
from fedsllm.wire import rpc
from fedsllm.wire.status import abort_for

SERVICE = "fedsllm.test.Claims"
PUSH = f"/{SERVICE}/Push"
STREAM = f"/{SERVICE}/Stream"
TIMEOUT_S = 10.0


def _register(handled: list[str]):
    def push(request: bytes, context: grpc.ServicerContext) -> bytes:
        # The id the message claims, checked against the channel's identity.
        try:
            authorize(role="client", client_id=int(request), action="push")
        except Exception as err:
            abort_for(context, err)
        handled.append(f"push:{int(request)}")
        return b"ok"

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            try:
                authorize(role="client", client_id=int(request), action="stream")
            except Exception as err:
                abort_for(context, err)
            handled.append(f"stream:{int(request)}")
            yield request

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Push": grpc.unary_unary_rpc_method_handler(push),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    return lambda server: server.add_generic_rpc_handlers((handler,))


def _tokens(*identities: Identity) -> TokenTable:
    return TokenTable.generate(identities)


def test_a_server_without_credentials_refuses_every_call_but_health() -> None:
    handled: list[str] = []
    server, port = rpc.create_server("127.0.0.1:0", [_register(handled)])
    address = f"127.0.0.1:{port}"
    try:
        with rpc.make_channel(address) as channel:
            for call in (
                lambda: channel.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S),
                lambda: list(channel.stream_stream(STREAM)(iter([b"0"]), timeout=TIMEOUT_S)),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "no credentials configured" in info.value.details()
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A token the server has no table for is no identity either.
        token = _tokens(Identity.client(0)).token_for(Identity.client(0))
        with (
            rpc.make_channel(address, rpc.Security(token=token)) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            channel.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        rpc.stop_server(server, grace_s=0.2)
    assert handled == []


def test_allow_unauthenticated_trusts_message_ids_for_unit_tests_only() -> None:
    handled: list[str] = []
    server, port = rpc.create_server(
        "127.0.0.1:0", [_register(handled)], allow_unauthenticated=True
    )
    try:
        with rpc.make_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(PUSH)(b"2", timeout=TIMEOUT_S) == b"ok"
            assert list(channel.stream_stream(STREAM)(iter([b"1"]), timeout=TIMEOUT_S)) == [b"1"]
    finally:
        rpc.stop_server(server, grace_s=0.2)
    assert handled == ["push:2", "stream:1"]


def test_allow_unauthenticated_is_refused_next_to_credentials() -> None:
    security = rpc.Security(tokens=_tokens(Identity.client(0)))
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        rpc.create_server("127.0.0.1:0", [], security=security, allow_unauthenticated=True)


def test_authorize_without_an_identity_is_unauthenticated() -> None:
    # Outside a served call (no interceptor): never a trusted default.
    with pytest.raises(AuthenticationError, match="no caller identity"):
        authorize(role="client", client_id=0, action="push")
    with calling_as(Identity.client(0)):
        assert authorize(role="client", client_id=0) == Identity.client(0)


def test_each_server_and_channel_uses_the_credentials_it_is_given() -> None:
    # Two servers of one process, each with its own peers: nothing is shared.
    a_tokens, b_tokens = _tokens(Identity.client(0)), _tokens(Identity.client(1))
    handled: list[str] = []
    a, a_port = rpc.create_server(
        "127.0.0.1:0", [_register(handled)], security=rpc.Security(tokens=a_tokens)
    )
    b, b_port = rpc.create_server(
        "127.0.0.1:0", [_register(handled)], security=rpc.Security(tokens=b_tokens)
    )
    as_0 = rpc.Security(token=a_tokens.token_for(Identity.client(0)))
    as_1 = rpc.Security(token=b_tokens.token_for(Identity.client(1)))
    try:
        with rpc.make_channel(f"127.0.0.1:{a_port}", as_0) as channel:
            assert channel.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S) == b"ok"
            with pytest.raises(grpc.RpcError) as info:  # its own id only
                channel.unary_unary(PUSH)(b"1", timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with rpc.make_channel(f"127.0.0.1:{b_port}", as_1) as channel:
            assert channel.unary_unary(PUSH)(b"1", timeout=TIMEOUT_S) == b"ok"
        with (
            rpc.make_channel(f"127.0.0.1:{b_port}", as_0) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            channel.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        rpc.stop_server(a, grace_s=0.2)
        rpc.stop_server(b, grace_s=0.2)
    assert handled == ["push:0", "push:1"]


def test_rpc_keeps_no_per_process_credentials() -> None:
    for name in ("_SECURITY", "configure_security", "current_security", "restored_security"):
        assert not hasattr(rpc, name)
