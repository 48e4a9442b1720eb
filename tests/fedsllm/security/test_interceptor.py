"""IdentityInterceptor through real gRPC servers on 127.0.0.1 port 0: mutual TLS
(own certificate, another client's, another CA's, none) and tokens (right,
wrong, missing), for unary and streaming handlers; require() and abort_for
give PERMISSION_DENIED. Generic handlers only (no project service)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedsllm.security.credentials import (
    channel_credentials,
    load_tls,
    server_credentials,
    tls_config_for,
)
from fedsllm.security.identity import (
    Identity,
    IdentityInterceptor,
    TokenTable,
    caller,
    require,
    token_metadata,
    with_token,
)
from fedsllm.wire.status import abort_for

SERVICE = "fedsllm.test.Echo"
WHO = f"/{SERVICE}/Who"
PUSH = f"/{SERVICE}/Push"
STREAM = f"/{SERVICE}/Stream"
COUNT = f"/{SERVICE}/Count"
REPEAT = f"/{SERVICE}/Repeat"
TIMEOUT_S = 10.0


@dataclass
class Calls:
    """What the handlers saw: the only state a refused call must not touch."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    handled: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        with self.lock:
            self.handled.append(what)


def _handlers(calls: Calls) -> grpc.GenericRpcHandler:
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        identity = caller(context)
        calls.add(f"who:{identity}")
        return str(identity).encode()

    def push(request: bytes, context: grpc.ServicerContext) -> bytes:
        # A client may push only as itself (the id a message claims is checked).
        try:
            require(caller(context), role="client", client_id=int(request), action="push")
        except Exception as err:
            abort_for(context, err)
        calls.add(f"push:{int(request)}")
        return b"ok"

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        first = str(caller(context))
        for request in requests:
            calls.add(f"stream:{first}")
            # caller() again inside the generator body: still the same identity.
            yield f"{caller(context)}:{request.decode()}".encode()

    def count(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        calls.add(f"count:{caller(context)}")
        return str(sum(1 for _ in requests)).encode()

    def repeat(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        calls.add(f"repeat:{caller(context)}")
        for _ in range(int(request)):
            yield str(caller(context)).encode()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Count": grpc.stream_unary_rpc_method_handler(count),
            "Repeat": grpc.unary_stream_rpc_method_handler(repeat),
            "Who": grpc.unary_unary_rpc_method_handler(who),
            "Push": grpc.unary_unary_rpc_method_handler(push),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )


def _server(calls: Calls, interceptor: IdentityInterceptor, creds: grpc.ServerCredentials | None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers([_handlers(calls)])
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def tls_server(cert_dir: Path, calls: Calls) -> Iterator[int]:
    material = load_tls(tls_config_for(cert_dir, Identity("main_server")))
    server, port = _server(calls, IdentityInterceptor(), server_credentials(material))
    yield port
    server.stop(None).wait()


def _tls_channel(port: int, ca_dir: Path, cert_dir: Path | None, stem: str) -> grpc.Channel:
    ca = (ca_dir / "ca.pem").read_bytes()
    if cert_dir is None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(cert_dir / f"{stem}.key").read_bytes(),
            certificate_chain=(cert_dir / f"{stem}.pem").read_bytes(),
        )
    return grpc.secure_channel(f"localhost:{port}", creds)


def _stream(channel: grpc.Channel, items: list[bytes]) -> list[bytes]:
    return list(channel.stream_stream(STREAM)(iter(items), timeout=TIMEOUT_S))


@pytest.mark.parametrize(
    "identity",
    [Identity.client(0), Identity.client(2), Identity("main_server"), Identity("launcher")],
)
def test_mtls_peer_is_identified_by_its_certificate(
    cert_dir: Path, tls_server: int, calls: Calls, identity: Identity
) -> None:
    material = load_tls(tls_config_for(cert_dir, identity))
    with grpc.secure_channel(f"localhost:{tls_server}", channel_credentials(material)) as ch:
        assert ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S) == str(identity).encode()
        assert _stream(ch, [b"a", b"b"]) == [f"{identity}:a".encode(), f"{identity}:b".encode()]
    assert calls.handled == [f"who:{identity}", f"stream:{identity}", f"stream:{identity}"]


def test_mtls_own_id_is_allowed_another_clients_is_denied(
    cert_dir: Path, tls_server: int, calls: Calls
) -> None:
    # The process holding client_1's certificate claims client 2 in the message.
    with _tls_channel(tls_server, cert_dir, cert_dir, "client_1") as ch:
        assert ch.unary_unary(PUSH)(b"1", timeout=TIMEOUT_S) == b"ok"
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(PUSH)(b"2", timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client/1 may not push as client 2" in info.value.details()
    assert calls.handled == ["push:1"]


def test_mtls_main_server_may_not_act_as_a_client(
    cert_dir: Path, tls_server: int, calls: Calls
) -> None:
    with (
        _tls_channel(tls_server, cert_dir, cert_dir, "main_server") as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        ch.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert calls.handled == []


@pytest.mark.parametrize("method", [WHO, STREAM])
def test_mtls_certificate_from_another_ca_is_refused_at_the_handshake(
    cert_dir: Path, other_cert_dir: Path, tls_server: int, calls: Calls, method: str
) -> None:
    # Same identity (fedsllm://client/0), same trusted server CA, wrong issuer.
    with (
        _tls_channel(tls_server, cert_dir, other_cert_dir, "client_0") as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        if method == WHO:
            ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S)
        else:
            _stream(ch, [b"x"])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert calls.handled == []


def test_mtls_no_client_certificate_is_refused(
    cert_dir: Path, tls_server: int, calls: Calls
) -> None:
    with _tls_channel(tls_server, cert_dir, None, "") as ch:
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S)
        # Health too: under mutual TLS nothing is reachable without a certificate.
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert calls.handled == []


def test_mtls_certificate_with_the_wrong_key_is_refused(
    cert_dir: Path, tls_server: int, calls: Calls
) -> None:
    # Holding another client's certificate without its key is not enough.
    creds = grpc.ssl_channel_credentials(
        root_certificates=(cert_dir / "ca.pem").read_bytes(),
        private_key=(cert_dir / "client_1.key").read_bytes(),
        certificate_chain=(cert_dir / "client_2.pem").read_bytes(),
    )
    with (
        grpc.secure_channel(f"localhost:{tls_server}", creds) as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert calls.handled == []


TOKENS = TokenTable(
    {
        "tok-client-0-aaaaaaaaaaaaaaaa": Identity.client(0),
        "tok-client-1-bbbbbbbbbbbbbbbb": Identity.client(1),
        "tok-main-server-cccccccccccccc": Identity("main_server"),
    }
)


@pytest.fixture
def token_server(calls: Calls) -> Iterator[int]:
    server, port = _server(calls, IdentityInterceptor(TOKENS), None)
    yield port
    server.stop(None).wait()


def test_token_identifies_the_caller_unary_and_stream(token_server: int, calls: Calls) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server}") as raw:
        ch = with_token(raw, "tok-client-1-bbbbbbbbbbbbbbbb")
        assert ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S) == b"client/1"
        assert _stream(ch, [b"a"]) == [b"client/1:a"]
        assert ch.unary_unary(PUSH)(b"1", timeout=TIMEOUT_S) == b"ok"
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Metadata given by hand works the same way.
        reply = raw.unary_unary(WHO)(
            b"", timeout=TIMEOUT_S, metadata=token_metadata("tok-main-server-cccccccccccccc")
        )
        assert reply == b"main_server"
    assert calls.handled == ["who:client/1", "stream:client/1", "push:1", "who:main_server"]


@pytest.mark.parametrize(
    "token",
    [None, "", "tok-client-1-bbbbbbbbbbbbbbbX", "tok-client-1-bbbbbbbbbbbbbbb", "Bearer"],
)
@pytest.mark.parametrize("method", [WHO, STREAM])
def test_wrong_or_missing_token_is_unauthenticated_and_never_handled(
    token_server: int, calls: Calls, token: str | None, method: str
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server}") as raw:
        ch = raw if token is None else with_token(raw, token)
        with pytest.raises(grpc.RpcError) as info:
            if method == WHO:
                ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S)
            else:
                _stream(ch, [b"a", b"b"])
        # The health service stays open for the launcher's polls.
        reply = health_pb2_grpc.HealthStub(raw).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("unknown token" if token else "no credentials") in info.value.details()
    assert calls.handled == []


def test_tls_only_server_refuses_a_token_over_plain_grpc(calls: Calls) -> None:
    # An interceptor without a token table accepts certificates only.
    server, port = _server(calls, IdentityInterceptor(), None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as raw:
            ch = with_token(raw, "tok-client-0-aaaaaaaaaaaaaaaa")
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(WHO)(b"", timeout=TIMEOUT_S)
    finally:
        server.stop(None).wait()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "mutual TLS" in info.value.details()
    assert calls.handled == []


def test_caller_without_interceptor_is_an_error_not_a_default(calls: Calls) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([_handlers(calls)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
            pytest.raises(grpc.RpcError) as info,
        ):
            ch.unary_unary(PUSH)(b"0", timeout=TIMEOUT_S)
    finally:
        server.stop(None).wait()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "IdentityInterceptor" in info.value.details()
    assert calls.handled == []


def test_all_four_handler_shapes_see_the_caller(token_server: int, calls: Calls) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server}") as raw:
        ch = with_token(raw, "tok-client-0-aaaaaaaaaaaaaaaa")
        assert ch.stream_unary(COUNT)(iter([b"a", b"b", b"c"]), timeout=TIMEOUT_S) == b"3"
        assert list(ch.unary_stream(REPEAT)(b"2", timeout=TIMEOUT_S)) == [b"client/0"] * 2
        for method in (COUNT, REPEAT):
            with pytest.raises(grpc.RpcError) as info:
                if method == COUNT:
                    raw.stream_unary(COUNT)(iter([b"a"]), timeout=TIMEOUT_S)
                else:
                    list(raw.unary_stream(REPEAT)(b"2", timeout=TIMEOUT_S))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert calls.handled == ["count:client/0", "repeat:client/0"]
