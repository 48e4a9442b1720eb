"""Mutual TLS on a real FedServer + RunInfo: the certificate is the identity; a
certificate from another CA, or none, never gets a call through, and a client
holding one client's certificate acts as that client only."""

from __future__ import annotations

import grpc
import pytest

from fed_server.rounds import RoundState
from fed_server.runinfo import RunInfoService
from fed_server.service import FedServerService
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.security.credentials import load_tls, tls_config_for
from fedsllm.security.identity import Identity
from fedsllm.trace import Tracer
from fedsllm.wire.rpc import CHANNEL_OPTIONS, Security
from tests.fedsllm.security.peers import CLIENT, code_of, serving, tls_channel_as

HASH = "scenario-hash"


@pytest.fixture
def fed(tmp_path, cert_dir):
    state = RoundState(
        num_clients=3, num_rounds=2, run_dir=tmp_path, tracer=Tracer(None, "fed_server")
    )
    service = FedServerService(
        state, HASH, num_local_steps=1, max_adapter_bytes=2**20, chunk_bytes=1024
    )
    run_info = RunInfoService({"name": "t"}, HASH, "", None, 1024)
    security = Security(tls=load_tls(tls_config_for(cert_dir, Identity("fed_server"))))
    register = [
        lambda s: pb_grpc.add_FedServerServicer_to_server(service, s),
        lambda s: pb_grpc.add_RunInfoServicer_to_server(run_info, s),
    ]
    with serving(register, security) as address:
        yield address, state


def join(channel: grpc.Channel, client_id: int) -> grpc.StatusCode | None:
    stub = pb_grpc.FedServerStub(channel)
    request = pb.JoinRequest(client_id=client_id, num_samples=5, scenario_hash=HASH)
    return code_of(lambda: stub.Join(request, timeout=5))


def test_own_certificate_joins_as_itself(fed, cert_dir) -> None:
    address, state = fed
    assert join(tls_channel_as(address, cert_dir, CLIENT[1]), 1) is None
    assert state.snapshot().joined == {1: 5}
    info = pb_grpc.RunInfoStub(tls_channel_as(address, cert_dir, CLIENT[1]))
    assert info.GetScenario(pb.GetScenarioRequest(), timeout=5).scenario_hash == HASH


def test_another_clients_certificate_acts_only_as_that_client(fed, cert_dir) -> None:
    address, state = fed
    # Holding client 1's certificate and key, a process is client 1: never client 0.
    assert join(tls_channel_as(address, cert_dir, CLIENT[1]), 0) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert state.snapshot().joined == {}


def test_certificate_of_another_ca_is_refused(fed, other_cert_dir) -> None:
    address, state = fed
    assert join(tls_channel_as(address, other_cert_dir, CLIENT[0]), 0) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert state.snapshot().joined == {}


def test_no_certificate_is_refused(fed, cert_dir) -> None:
    address, state = fed
    ca = (cert_dir / "ca.pem").read_bytes()
    no_cert = grpc.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca), options=list(CHANNEL_OPTIONS)
    )
    plain = grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
    for channel in (no_cert, plain):
        assert join(channel, 0) == grpc.StatusCode.UNAVAILABLE
    assert state.snapshot().joined == {}
