"""A role's credentials refused at start: one line naming the credential (exit 2
through fedsllm.roles.role_main), never a gRPC traceback; a certificate of
another identity refused before any connection; a TLS handshake that fails
said at WARNING, once, while it is retried. Real servers on port 0."""

from __future__ import annotations

import argparse
import logging
import socket
from types import SimpleNamespace

import grpc
import pytest

from fed_server.rounds import RoundState
from fed_server.runinfo import RunInfoService
from fed_server.service import FedServerService
from fedsllm.bootstrap import SettingError
from fedsllm.config import load_scenario
from fedsllm.launch import scenario_hash
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.roles import (
    check_own_certificate,
    credential_error,
    role_base_file,
    role_main,
    role_start,
    wait_for_fed_server,
)
from fedsllm.security.credentials import load_tls, tls_config_for
from fedsllm.security.identity import Identity
from fedsllm.trace import Tracer
from fedsllm.wire.rpc import (
    ReconnectError,
    RetryPolicy,
    Security,
    make_channel,
    security_from_env,
)
from tests.fedsllm.security.peers import CLIENT, MAIN, STRANGER_TOKEN, TOKENS, serving

NO_SCENARIO = argparse.Namespace(scenario_json=None)


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(None, ["model.pretrain_steps=0", "data.seq_len=16"])


def _register(tmp_path, scenario) -> list:
    state = RoundState(
        num_clients=3, num_rounds=2, run_dir=tmp_path, tracer=Tracer(None, "fed_server")
    )
    fed = FedServerService(
        state, scenario_hash(scenario), num_local_steps=1, max_adapter_bytes=2**20, chunk_bytes=64
    )
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"weights" * 10)
    info = RunInfoService(scenario.to_dict(), scenario_hash(scenario), "h", base, 64)
    return [
        lambda s: pb_grpc.add_FedServerServicer_to_server(fed, s),
        lambda s: pb_grpc.add_RunInfoServicer_to_server(info, s),
    ]


@pytest.fixture
def fed(tmp_path, scenario):
    """A fed server accepting the test TOKENS."""
    with serving(_register(tmp_path, scenario)) as address:
        yield address


@pytest.fixture
def tls_fed(tmp_path, scenario, cert_dir):
    """A fed server with mutual TLS from `cert_dir`'s CA."""
    security = Security(tls=load_tls(tls_config_for(cert_dir, Identity("fed_server"))))
    with serving(_register(tmp_path, scenario), security) as address:
        yield address


def _tls_flags(cert_dir, who: Identity) -> Security:
    """A role's security as its flags give it (--tls-ca/--tls-cert/--tls-key)."""
    return security_from_env(
        env={},
        flags={
            "ca": str(cert_dir / "ca.pem"),
            "cert": str(cert_dir / f"{who.file_stem}.pem"),
            "key": str(cert_dir / f"{who.file_stem}.key"),
        },
    )


def test_no_credentials_at_start_name_the_token_to_give(fed, tmp_path) -> None:
    with pytest.raises(SettingError) as err:
        role_start(NO_SCENARIO, fed, tmp_path, security_from_env(env={}))
    assert str(err.value) == (
        f"FEDSLLM_TOKEN: not set, and the fed server at {fed} refuses a role without "
        "credentials (UNAUTHENTICATED: /fedsllm.proto.RunInfo/GetScenario: no credentials: "
        "send 'authorization: Bearer <token>' metadata or connect with mutual TLS); give this "
        "role's token (FEDSLLM_TOKEN_FILE or FEDSLLM_TOKEN) or its TLS files "
        "(--tls-ca/--tls-cert/--tls-key)"
    )


def test_an_unknown_token_is_named_by_its_variable_never_shown(fed, tmp_path) -> None:
    with pytest.raises(SettingError) as err:
        role_start(
            NO_SCENARIO, fed, tmp_path, security_from_env(env={"FEDSLLM_TOKEN": STRANGER_TOKEN})
        )
    assert str(err.value) == (
        f"FEDSLLM_TOKEN: the fed server at {fed} refused it (UNAUTHENTICATED: "
        "/fedsllm.proto.RunInfo/GetScenario: unknown token); that server does not know this "
        "token: give this role's, as its peer tokens list it"
    )
    assert STRANGER_TOKEN not in str(err.value)


def test_a_token_file_is_named_with_its_path(fed, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(STRANGER_TOKEN)
    security = security_from_env(env={"FEDSLLM_TOKEN_FILE": str(token_file)})
    with pytest.raises(SettingError) as err:
        role_start(NO_SCENARIO, fed, tmp_path, security)
    assert str(err.value).startswith(f"FEDSLLM_TOKEN_FILE: the fed server at {fed} refused it")
    assert str(err.value).endswith(f", got '{token_file}'")


def test_the_base_download_refused_names_the_credential(fed, tmp_path) -> None:
    info = SimpleNamespace(base_bytes=70, base_hash="h")
    with pytest.raises(SettingError, match=r"^FEDSLLM_TOKEN: the fed server at .* refused it "):
        role_base_file(
            info, fed, tmp_path, security_from_env(env={"FEDSLLM_TOKEN": STRANGER_TOKEN})
        )
    own = security_from_env(env={"FEDSLLM_TOKEN": TOKENS.token_for(MAIN)})
    assert role_base_file(info, fed, tmp_path, own).read_bytes() == b"weights" * 10


def test_another_roles_token_at_join_names_the_token(fed, scenario) -> None:
    from main_server.__main__ import join_main_server

    security = security_from_env(env={"FEDSLLM_TOKEN": TOKENS.token_for(CLIENT[0])})
    peer = f"the fed server at {fed}"
    with make_channel(fed, security) as channel, pytest.raises(SettingError) as err:
        join_main_server(channel, scenario_hash(scenario), "h", security=security, peer=peer)
    assert str(err.value) == (
        f"FEDSLLM_TOKEN: the fed server at {fed} refused it (PERMISSION_DENIED: client/0 may "
        "not JoinMainServer: only main_server may); it is another role's token: give this "
        "role's own"
    )


def test_another_clients_certificate_names_the_cert_flag(tls_fed, cert_dir) -> None:
    security = _tls_flags(cert_dir, CLIENT[1])
    stub = pb_grpc.FedServerStub(make_channel(tls_fed, security))
    request = pb.JoinRequest(client_id=0, num_samples=5, scenario_hash="x")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Join(request, timeout=5)
    err = credential_error(caught.value, security, "a server of this run")
    assert str(err) == (
        "--tls-cert: a server of this run refused it (PERMISSION_DENIED: client/1 may not Join "
        "as client 0: a client acts only as itself); give this role's own certificate and key, "
        f"issued by the run's CA (fedsllm certs DIR: DIR/<role>.pem), got "
        f"'{cert_dir / 'client_1.pem'}'"
    )


def test_other_errors_are_no_credential_error() -> None:
    assert credential_error(ValueError("x"), None, "p") is None


def test_a_certificate_of_another_identity_is_refused_before_connecting(cert_dir) -> None:
    security = _tls_flags(cert_dir, CLIENT[1])
    with pytest.raises(SettingError) as err:
        check_own_certificate(security, Identity.client(0), "--client-id 0")
    assert str(err.value) == (
        "--tls-cert: is the certificate of client/1, but this role is client/0 (--client-id 0); "
        f"give client/0's (client_0.pem and .key of fedsllm certs), got "
        f"'{cert_dir / 'client_1.pem'}'"
    )
    check_own_certificate(security, Identity.client(1), "--client-id 1")  # its own: fine
    check_own_certificate(Security(token="t" * 20), Identity.client(0))  # no TLS: nothing to check


def test_a_failing_handshake_is_said_once_then_names_the_ca(
    tls_fed, other_cert_dir, caplog
) -> None:
    security = _tls_flags(other_cert_dir, CLIENT[0])
    with (
        caplog.at_level(logging.WARNING, logger="fedsllm.wire.rpc"),
        pytest.raises(SettingError) as err,
    ):
        wait_for_fed_server(tls_fed, security, timeout_s=3.0)
    message = str(err.value)
    assert message.startswith(
        f"--tls-ca: the TLS handshake with the fed server at {tls_fed} failed for 3 s ("
    )
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert message.endswith(
        "this CA must have issued the fed server's certificate and this role's (one `fedsllm "
        f"certs` directory), got '{other_cert_dir / 'ca.pem'}'"
    )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        f"waiting for the fed server at {tls_fed}: TLS handshake with the peer fails ("
    )


def test_a_retried_call_says_the_handshake_fails_once(tls_fed, other_cert_dir, caplog) -> None:
    """What the client's reconnect loop logs (it used to retry silently for 300 s)."""
    now = [0.0]
    policy = RetryPolicy(
        budget_s=5.0,
        base_s=1.0,
        cap_s=1.0,
        jitter=0.0,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
    )
    stub = pb_grpc.RunInfoStub(make_channel(tls_fed, _tls_flags(other_cert_dir, CLIENT[0])))
    with (
        caplog.at_level(logging.WARNING, logger="fedsllm.wire.rpc"),
        pytest.raises(ReconnectError, match="Tls handshake failed"),
    ):
        policy.call("GetScenario", lambda: stub.GetScenario(pb.GetScenarioRequest(), timeout=5))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("GetScenario: TLS handshake with the peer fails (")
    assert "CERTIFICATE_VERIFY_FAILED" in warning
    assert warning.endswith("retrying with backoff for up to 5 s until it answers")


def test_role_main_turns_a_bad_setting_into_exit_2(caplog) -> None:
    log = logging.getLogger("test_role")

    @role_main(log)
    def main(argv: list[str] | None = None) -> int:
        raise SettingError("--bind", "127.0.0.1:1", "address in use")

    with caplog.at_level(logging.ERROR, logger="test_role"):
        assert main([]) == 2
    assert [r.getMessage() for r in caplog.records] == ["--bind: address in use, got '127.0.0.1:1'"]


def test_role_main_refuses_an_unreadable_store_in_one_line_exit_2(caplog) -> None:
    """A role's own store it cannot read (a client's or the main server's
    checkpoint, the fed server's ledger) was a StoreFormatError traceback, exit 1."""
    from fedsllm.state.errors import StoreFormatError

    log = logging.getLogger("test_role")

    @role_main(log)
    def main(argv: list[str] | None = None) -> int:
        raise StoreFormatError("w/state/checkpoint.json", None, 1, "not JSON (Expecting value)")

    with caplog.at_level(logging.ERROR, logger="test_role"):
        assert main([]) == 2
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("w/state/checkpoint.json: not JSON (Expecting value); the file is")


def test_role_main_makes_a_peer_gone_mid_run_one_line_exit_1(caplog) -> None:
    """A ReconnectError after the whole budget was a traceback; it is a failure of
    the run (exit 1), said in one line, and other errors still propagate."""
    log = logging.getLogger("test_role")

    @role_main(log)
    def gone(argv: list[str] | None = None) -> int:
        raise ReconnectError("PushAdapter", 300.4, grpc.StatusCode.UNAVAILABLE, "Socket closed")

    with caplog.at_level(logging.ERROR, logger="test_role"):
        assert gone([]) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "PushAdapter: still UNAVAILABLE after 300 s of reconnecting (last: Socket closed); "
        "giving up"
    ]

    @role_main(log)
    def broken(argv: list[str] | None = None) -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        broken([])


def test_a_fed_server_that_never_answers_names_the_address_flag() -> None:
    """Was UnreachableError's traceback (exit 1) after the 120 s start-up wait."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        with pytest.raises(SettingError) as err:
            wait_for_fed_server(address, None, timeout_s=1.0, source="--control-address")
    message = str(err.value)
    assert message.startswith("--control-address: the fed server did not answer for 1 s (last: ")
    assert message.endswith(f"is it up, and is this its address?, got '{address}'")
