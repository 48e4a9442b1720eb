"""The read-only `watcher` identity: it may follow the telemetry, ask the fed
server's Status and read the run's scenario, and nothing else, on every
server, by token or by certificate. Before it existed a subscriber had to
hold the launcher's token (which can also read the server adapter and push
telemetry as the launcher)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fed_server.rounds import RoundState
from fed_server.service import FedServerService
from fedsllm.proto import (
    controller_pb2,
    controller_pb2_grpc,
    fed_server_pb2,
    fed_server_pb2_grpc,
    main_server_pb2,
    main_server_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)
from fedsllm.security.identity import READ_ONLY_METHODS, Identity, parse_identity
from fedsllm.telemetry.codec import record_to_proto, role_to_proto
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.service import TelemetryService, add_to_server, grpc_push
from fedsllm.trace import Tracer
from fedsllm.wire.rpc import Security, make_channel
from tests.fedsllm.security.peers import (
    CLIENT,
    LAUNCHER,
    TOKENS,
    WATCHER,
    channel_as,
    code_of,
    serving,
    tls_channel_as,
)
from tests.fedsllm.telemetry.helpers import event, wait_for

ALLOWED = {
    "/fedsllm.proto.Telemetry/Subscribe",
    "/fedsllm.proto.FedServer/Status",
    "/fedsllm.proto.RunInfo/GetScenario",
}

# Every service of the project with its generated base servicer, whose methods
# all answer UNIMPLEMENTED: a call that gets that far passed the interceptor.
SERVICES = [
    (fed_server_pb2, fed_server_pb2_grpc, "FedServer"),
    (fed_server_pb2, fed_server_pb2_grpc, "RunInfo"),
    (main_server_pb2, main_server_pb2_grpc, "MainServer"),
    (controller_pb2, controller_pb2_grpc, "Controller"),
    (telemetry_pb2, telemetry_pb2_grpc, "Telemetry"),
]


def _methods() -> list[tuple[str, bool, bool]]:
    """(full method name, client streams, server streams) of every RPC in the protos."""
    out = []
    for pb2, _, name in SERVICES:
        service = pb2.DESCRIPTOR.services_by_name[name]
        for m in service.methods:
            full = f"/{service.full_name}/{m.name}"
            out.append((full, m.client_streaming, m.server_streaming))
    return out


METHODS = _methods()


def _raw_call(channel: grpc.Channel, method: str, c_stream: bool, s_stream: bool) -> object:
    """Call `method` with an empty message (the interceptor decides before any is read)."""
    ident = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    if c_stream and s_stream:
        return list(channel.stream_stream(method, **ident)(iter([b""]), timeout=5))
    if c_stream:
        return channel.stream_unary(method, **ident)(iter([b""]), timeout=5)
    if s_stream:
        return list(channel.unary_stream(method, **ident)(b"", timeout=5))
    return channel.unary_unary(method, **ident)(b"", timeout=5)


def _add_all(server: grpc.Server) -> None:
    for _, pb2_grpc, name in SERVICES:
        servicer = getattr(pb2_grpc, f"{name}Servicer")()
        getattr(pb2_grpc, f"add_{name}Servicer_to_server")(servicer, server)


def test_the_watcher_is_an_identity_with_a_uri() -> None:
    assert parse_identity("fedsllm://watcher") == WATCHER == Identity("watcher")
    assert WATCHER.uri == "fedsllm://watcher"
    assert set(READ_ONLY_METHODS["watcher"]) == ALLOWED
    # Every method it may call exists in the protos (a renamed RPC is noticed here).
    assert {m for m, _, _ in METHODS} >= ALLOWED


@pytest.fixture(scope="module")
def every_service() -> Iterator[str]:
    with serving([_add_all]) as address:
        yield address


@pytest.mark.parametrize(("method", "c_stream", "s_stream"), METHODS, ids=[m for m, *_ in METHODS])
def test_a_watcher_reaches_only_the_read_only_methods(
    every_service: str, method: str, c_stream: bool, s_stream: bool
) -> None:
    with channel_as(every_service, WATCHER) as channel:
        try:
            _raw_call(channel, method, c_stream, s_stream)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
        else:
            raise AssertionError(f"{method} answered a watcher")
    if method in ALLOWED:
        assert code == grpc.StatusCode.UNIMPLEMENTED  # reached the handler
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED
        short = method.rsplit(".", 1)[-1]
        assert details == (
            f"watcher may not call {short}: a watcher is read-only and may call only "
            "FedServer/Status, RunInfo/GetScenario, Telemetry/Subscribe (and the health service)"
        )
    # The launcher, for contrast, reaches every handler.
    with channel_as(every_service, LAUNCHER) as channel:
        assert code_of(lambda: _raw_call(channel, method, c_stream, s_stream)) == (
            grpc.StatusCode.UNIMPLEMENTED
        )


def test_a_watcher_follows_the_telemetry_and_can_push_none_of_it(tmp_path: Path) -> None:
    collector = TelemetryCollector(tmp_path / "trace")
    try:
        with serving([add_to_server(TelemetryService(collector, poll_s=0.05))]) as address:
            with channel_as(address, CLIENT[0]) as channel:
                grpc_push(channel, "client", 0)([record_to_proto(event(7).numbered(1))], False)
            watch = telemetry_pb2_grpc.TelemetryStub(channel_as(address, WATCHER))
            stream = watch.Subscribe(telemetry_pb2.SubscribeTelemetryRequest(), timeout=10)
            first = next(stream)
            stream.cancel()
            assert first.index == 0 and first.record.step == 7
            for role, source_client in [
                ("client", 0),
                ("main_server", -1),
                ("fed_server", -1),
                ("launcher", -1),
            ]:
                request = telemetry_pb2.PushTelemetryRequest(
                    role=role_to_proto(role),
                    source_client=source_client,
                    records=[],
                    final=True,
                )
                with pytest.raises(grpc.RpcError) as err:
                    watch.Push(request, timeout=5)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "watcher may not call Telemetry/Push" in err.value.details()
            assert len(collector.records()) == 1
    finally:
        collector.close()


def test_a_watcher_reads_a_real_fed_servers_status_and_cannot_join(tmp_path: Path) -> None:
    state = RoundState(
        num_clients=2, num_rounds=3, run_dir=tmp_path, tracer=Tracer(None, "fed_server")
    )
    service = FedServerService(
        state, "hash", num_local_steps=1, max_adapter_bytes=2**20, chunk_bytes=1024
    )

    def register(server: grpc.Server) -> None:
        fed_server_pb2_grpc.add_FedServerServicer_to_server(service, server)

    with serving([register]) as address:
        stub = fed_server_pb2_grpc.FedServerStub(channel_as(address, WATCHER))
        status = stub.Status(fed_server_pb2.StatusRequest(), timeout=5)
        assert status.num_rounds == 3 and not status.finished
        join = fed_server_pb2.JoinRequest(client_id=0, num_samples=10, scenario_hash="hash")
        assert code_of(lambda: stub.Join(join, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert not state.snapshot().joined


def test_a_watcher_certificate_follows_under_mutual_tls(cert_dir: Path, tmp_path: Path) -> None:
    from fedsllm.security.credentials import load_tls, tls_config_for

    fed = load_tls(tls_config_for(cert_dir, Identity("fed_server")))
    collector = TelemetryCollector(tmp_path / "trace")
    collector.store([event(3).numbered(1)])
    try:
        with serving(
            [add_to_server(TelemetryService(collector, poll_s=0.05))], Security(tls=fed)
        ) as address:
            stub = telemetry_pb2_grpc.TelemetryStub(tls_channel_as(address, cert_dir, WATCHER))
            stream = stub.Subscribe(telemetry_pb2.SubscribeTelemetryRequest(), timeout=10)
            assert next(stream).record.step == 3
            stream.cancel()
            push = telemetry_pb2.PushTelemetryRequest(role=role_to_proto("launcher"))
            assert code_of(lambda: stub.Push(push, timeout=5)) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
    finally:
        collector.close()


def test_a_watcher_token_works_with_the_library_watcher(tmp_path: Path) -> None:
    from fedsllm.telemetry.service import TelemetryWatcher

    collector = TelemetryCollector(tmp_path / "trace")
    collector.store([event(i).numbered(i + 1) for i in range(3)])
    try:
        with serving([add_to_server(TelemetryService(collector, poll_s=0.05))]) as address:
            watcher = TelemetryWatcher(
                address, retry_s=0.05, security=Security(token=TOKENS.token_for(WATCHER))
            )
            seen: list[int] = []
            try:
                wait_for(
                    lambda: bool(seen.extend(r.step for r in watcher.poll())) or len(seen) == 3
                )
            finally:
                watcher.close()
            assert seen == [0, 1, 2] and watcher.refused is None
    finally:
        collector.close()


def test_make_channel_with_the_watcher_token_is_all_a_tool_needs(tmp_path: Path) -> None:
    """What the README tells a tool to do: the token as Bearer metadata."""
    collector = TelemetryCollector(tmp_path / "trace")
    collector.store([event(5).numbered(1)])
    try:
        with serving([add_to_server(TelemetryService(collector, poll_s=0.05))]) as address:
            channel = make_channel(address, Security(token=TOKENS.token_for(WATCHER)))
            with channel:
                stub = telemetry_pb2_grpc.TelemetryStub(channel)
                stream = stub.Subscribe(telemetry_pb2.SubscribeTelemetryRequest(), timeout=10)
                assert next(stream).record.step == 5
                stream.cancel()
    finally:
        collector.close()
