"""Where TLS files come from (flag > env > scenario), loading them, and the insecure rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from fedsllm.errors import ConfigError
from fedsllm.security.credentials import (
    ENV_VARS,
    channel_credentials,
    check_insecure,
    is_loopback,
    load_tls,
    resolve_tls,
    server_credentials,
    target_name_option,
    tls_config_for,
)
from fedsllm.security.identity import Identity


def test_nothing_named_means_no_tls() -> None:
    assert resolve_tls(None, {}, None) is None
    assert resolve_tls({"ca": None, "cert": "", "key": None}, {}, {}) is None


def test_flag_beats_env_beats_scenario() -> None:
    flags = {"ca": "/f/ca.pem"}
    env = {ENV_VARS["ca"]: "/e/ca.pem", ENV_VARS["cert"]: "/e/c.pem"}
    scenario = {"ca": "/s/ca.pem", "cert": "/s/c.pem", "key": "/s/c.key"}
    config = resolve_tls(flags, env, scenario)
    assert config is not None
    assert (config.ca, config.cert, config.key) == (
        Path("/f/ca.pem"),
        Path("/e/c.pem"),
        Path("/s/c.key"),
    )
    assert config.sources == ("--tls-ca", "FEDSLLM_TLS_CERT", "tls.key")


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for field, var in ENV_VARS.items():
        monkeypatch.setenv(var, f"/x/{field}")
    config = resolve_tls()
    assert config is not None and config.key == Path("/x/key")


def test_partial_tls_names_what_is_missing() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_tls(None, {ENV_VARS["cert"]: "/e/c.pem"}, None)
    message = str(info.value)
    assert message.startswith("FEDSLLM_TLS_CERT:")
    assert "--tls-ca or FEDSLLM_TLS_CA or tls.ca" in message
    assert "--tls-key or FEDSLLM_TLS_KEY or tls.key" in message


def test_load_tls_and_build_credentials(cert_dir: Path) -> None:
    material = load_tls(tls_config_for(cert_dir, Identity.client(2)))
    assert material.identity == Identity.client(2)
    assert isinstance(server_credentials(material), grpc.ServerCredentials)
    assert isinstance(channel_credentials(material), grpc.ChannelCredentials)
    assert target_name_option(Identity("fed_server")) == (
        "grpc.ssl_target_name_override",
        "fed-server",
    )


def _copy(cert_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "c"
    shutil.copytree(cert_dir, out)
    return out


def test_missing_file_names_the_variable(cert_dir: Path, tmp_path: Path) -> None:
    env = {
        ENV_VARS["ca"]: str(cert_dir / "ca.pem"),
        ENV_VARS["cert"]: str(tmp_path / "nope.pem"),
        ENV_VARS["key"]: str(cert_dir / "client_0.key"),
    }
    config = resolve_tls(None, env, None)
    assert config is not None
    with pytest.raises(ConfigError, match="^FEDSLLM_TLS_CERT: cannot read"):
        load_tls(config)


@pytest.mark.parametrize(
    "field, content, match",
    [
        ("ca", b"garbage", "tls.ca: not a PEM certificate"),
        ("cert", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "tls.cert"),
        ("key", b"not a key", "tls.key: not an unencrypted PEM private key"),
    ],
)
def test_bad_file_names_the_field(
    cert_dir: Path, tmp_path: Path, field: str, content: bytes, match: str
) -> None:
    files = {"ca": cert_dir / "ca.pem", "cert": cert_dir / "client_0.pem"}
    files["key"] = cert_dir / "client_0.key"
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    files[field] = bad
    config = resolve_tls(None, {}, {k: str(v) for k, v in files.items()})
    assert config is not None
    with pytest.raises(ConfigError, match=match):
        load_tls(config)


def test_key_of_another_identity_is_refused(cert_dir: Path) -> None:
    scenario = {
        "ca": cert_dir / "ca.pem",
        "cert": cert_dir / "client_0.pem",
        "key": cert_dir / "client_1.key",
    }
    config = resolve_tls(None, {}, scenario)
    assert config is not None
    with pytest.raises(ConfigError, match="tls.key: is not the private key of .*client_0.pem"):
        load_tls(config)


def test_certificate_without_identity_is_refused(cert_dir: Path) -> None:
    # The CA certificate has no fedsllm URI SAN; used as the own cert it is refused.
    with pytest.raises(ConfigError, match="--tls-cert"):
        load_tls(
            resolve_tls(
                {"ca": cert_dir / "ca.pem", "cert": cert_dir / "ca.pem"},
                {},
                {"key": cert_dir / "client_0.key"},
            )
        )


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:0", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/tmp/sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.7:50051", False),
        ("fed-server:50051", False),
        ("dns:///fed-server:50051", False),
        ("dns:///localhost:50051", True),
    ],
)
def test_check_insecure(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
    if loopback:
        assert check_insecure(address, allow_insecure=False) is None
        assert check_insecure(address, allow_insecure=True) is None
    else:
        with pytest.raises(ConfigError, match="--insecure"):
            check_insecure(address, allow_insecure=False)
        warning = check_insecure(address, allow_insecure=True)
        assert warning is not None and address in warning and warning.isascii()
