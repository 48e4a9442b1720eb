"""fedsllm.security.certs and `fedsllm certs`: files, SANs, chain, refusals."""

from __future__ import annotations

import datetime
import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsllm.cli import main
from fedsllm.errors import ConfigError
from fedsllm.security.certs import identities, read_index, write_certs
from fedsllm.security.identity import Identity, identity_from_certificate

EXPECTED_STEMS = [
    "fed_server",
    "main_server",
    "controller",
    "launcher",
    "watcher",
    "client_0",
    "client_1",
    "client_2",
]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_are_named_predictably_and_keys_are_private(cert_dir: Path) -> None:
    names = sorted(p.name for p in cert_dir.iterdir())
    expected = {"ca.pem", "index.json"}
    for stem in EXPECTED_STEMS:
        expected |= {f"{stem}.pem", f"{stem}.key"}
    assert names == sorted(expected)
    for stem in EXPECTED_STEMS:
        assert stat.S_IMODE((cert_dir / f"{stem}.key").stat().st_mode) == 0o600
    assert not any("ca.key" in n for n in names)  # the CA key is never written


@pytest.mark.parametrize("stem", EXPECTED_STEMS)
def test_each_certificate_chains_to_the_ca_with_its_sans(cert_dir: Path, stem: str) -> None:
    ca = _cert(cert_dir / "ca.pem")
    cert = _cert(cert_dir / f"{stem}.pem")
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    identity = Identity.client(int(stem[7:])) if stem.startswith("client_") else Identity(stem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [identity.uri]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", identity.service_name]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert identity_from_certificate((cert_dir / f"{stem}.pem").read_bytes()) == identity

    key = serialization.load_pem_private_key((cert_dir / f"{stem}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_other_ca_does_not_verify(cert_dir: Path, other_cert_dir: Path) -> None:
    from cryptography.exceptions import InvalidSignature

    with pytest.raises((InvalidSignature, ValueError)):
        _cert(cert_dir / "client_0.pem").verify_directly_issued_by(_cert(other_cert_dir / "ca.pem"))


def test_index_lists_every_identity(cert_dir: Path) -> None:
    doc = json.loads((cert_dir / "index.json").read_text())
    assert doc["format_version"] == 1 and doc["ca"] == "ca.pem"
    assert [e["uri"] for e in doc["identities"]] == [i.uri for i in identities(3)]
    index = read_index(cert_dir)
    assert index[Identity.client(2)] == (cert_dir / "client_2.pem", cert_dir / "client_2.key")
    assert set(index) == set(identities(3))


def test_extra_hosts_and_validity(tmp_path: Path) -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    write_certs(
        tmp_path / "c",
        1,
        validity_days=2,
        extra_dns_names=["gpu-box.lan"],
        extra_ip_addresses=["10.0.0.7"],
        now=now,
    )
    cert = _cert(tmp_path / "c" / "client_0.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gpu-box.lan" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.0.0.7") in san.get_values_for_type(x509.IPAddress)
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=2)
    assert cert.not_valid_before_utc == now - datetime.timedelta(minutes=5)  # clock skew


def test_non_empty_dir_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        write_certs(tmp_path, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_unwritable_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be created"):
        write_certs(blocker / "certs", 1)  # a file where a directory should go
    with pytest.raises(ConfigError, match="not a directory"):
        write_certs(blocker, 1)


def test_cli_writes_k_clients_and_exits_2_on_a_bad_dir(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pki"
    assert main(["certs", str(out), "--clients", "2"]) == 0
    assert (out / "client_1.pem").exists() and not (out / "client_2.pem").exists()
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["certs", str(out), "--clients", "2"]) == 2  # now non-empty
    err = capsys.readouterr().err
    assert "DIR" in err and "not empty" in err and len(err.strip().splitlines()) == 1
    assert main(["certs", str(tmp_path / "neg"), "--clients", "-1"]) == 2


def test_cli_host_puts_the_hosts_roles_dial_into_every_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Across machines a role dials fed-host, not localhost: without --host no
    `fedsllm certs` certificate passed the TLS host check there."""
    from fedsllm.cli import main

    out = tmp_path / "c"
    assert (
        main(["certs", str(out), "--clients", "1", "--host", "fed-host", "--host", "10.0.0.5"]) == 0
    )
    for stem in ("fed_server", "main_server", "client_0"):
        san = (
            _cert(out / f"{stem}.pem")
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        assert "fed-host" in san.get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["certs", str(bad), "--host", "fed-host:50051"]) == 2
    assert "--host" in capsys.readouterr().err
    assert not bad.exists()  # refused before anything is written
