"""Issue a throwaway CA and one certificate + key per role and per client.

`write_certs(out_dir, num_clients)` writes, into a new or empty directory:

    ca.pem                        the CA certificate (every peer trusts it)
    <stem>.pem, <stem>.key        per identity: fed_server, main_server,
                                  controller, launcher, watcher (read-only:
                                  follows telemetry), client_0 .. client_{K-1}
    index.json                    what was issued (identity, URI, files, SANs, expiry)

Keys are EC P-256 in unencrypted PKCS#8 PEM, created with mode 0600. Every
certificate is good for TLS server and client auth (each role both serves and
calls), and carries the SANs: DNS localhost and the identity's compose service
name (fed-server, main-server, client-3, ...), IP 127.0.0.1, and the URI
naming the identity (fedsllm://client/3), which fedsllm.security.identity reads.
The CA's private key is never written: nothing can issue more certificates
later; to add clients, issue a new directory. The command line lives in
fedsllm.cli.certs.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsllm.errors import NO_VALUE, ConfigError
from fedsllm.security.identity import Identity

INDEX_FORMAT_VERSION = 1
CA_FILE = "ca.pem"
INDEX_FILE = "index.json"
SERVICE_ROLES = ("fed_server", "main_server", "controller", "launcher", "watcher")
DEFAULT_VALIDITY_DAYS = 30
CLOCK_SKEW_S = 300
"""not_valid_before is back-dated this much, so a peer whose clock is a little
behind accepts a certificate issued a moment ago."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IssuedCert:
    """One identity's files, relative to the certificate directory."""

    identity: Identity
    cert_file: str
    key_file: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


def identities(num_clients: int) -> list[Identity]:
    """Every identity a run with `num_clients` clients needs a certificate for."""
    return [Identity(role) for role in SERVICE_ROLES] + [
        Identity.client(i) for i in range(num_clients)
    ]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError("DIR", str(out_dir), "exists and is not a directory")
        if any(out_dir.iterdir()):
            raise ConfigError(
                "DIR",
                str(out_dir),
                "is not empty; certificates are never overwritten, give a new or empty directory",
            )
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("DIR", str(out_dir), f"cannot be created ({err.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConfigError("DIR", str(out_dir), "is not writable")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (a key is never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed or the FS ignored it


def write_certs(
    out_dir: str | Path,
    num_clients: int,
    *,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    extra_dns_names: Sequence[str] = (),
    extra_ip_addresses: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> list[IssuedCert]:
    """Create the CA and every identity's certificate and key in `out_dir`.

    `out_dir` must be absent or empty and writable (ConfigError on "DIR"
    otherwise, before anything is written). `extra_dns_names` and
    `extra_ip_addresses` are added to every certificate (the hosts of a run
    across machines). Returns what was issued, in index order.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if num_clients < 0:
        raise ConfigError("--clients", num_clients, "must be >= 0")
    if validity_days < 1:
        raise ConfigError("validity_days", validity_days, "must be >= 1")
    try:
        ips = [ipaddress.ip_address(a) for a in ("127.0.0.1", *extra_ip_addresses)]
    except ValueError as err:
        raise ConfigError("extra_ip_addresses", list(extra_ip_addresses), str(err)) from None
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)

    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(seconds=CLOCK_SKEW_S)
    end = start + datetime.timedelta(days=validity_days, seconds=CLOCK_SKEW_S)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsllm"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedsllm test CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_new(out_dir / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    issued = []
    for identity in identities(num_clients):
        key = ec.generate_private_key(ec.SECP256R1())
        dns_names = tuple(dict.fromkeys(["localhost", identity.service_name, *extra_dns_names]))
        san = x509.SubjectAlternativeName(
            [
                *(x509.DNSName(name) for name in dns_names),
                *(x509.IPAddress(ip) for ip in ips),
                x509.UniformResourceIdentifier(identity.uri),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsllm"),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.file_stem),
                    ]
                )
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(san, critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        record = IssuedCert(
            identity=identity,
            cert_file=f"{identity.file_stem}.pem",
            key_file=f"{identity.file_stem}.key",
            dns_names=dns_names,
            ip_addresses=tuple(str(ip) for ip in ips),
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(out_dir / record.key_file, key_pem, 0o600)
        _write_new(out_dir / record.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        issued.append(record)

    index = {
        "format_version": INDEX_FORMAT_VERSION,
        "ca": CA_FILE,
        "not_valid_before": start.isoformat(),
        "not_valid_after": end.isoformat(),
        "identities": [
            {
                "identity": str(r.identity),
                "uri": r.identity.uri,
                "cert": r.cert_file,
                "key": r.key_file,
                "dns_names": list(r.dns_names),
                "ip_addresses": list(r.ip_addresses),
            }
            for r in issued
        ],
    }
    _write_new(out_dir / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode(), 0o644)
    return issued


def read_index(cert_dir: str | Path) -> dict[Identity, tuple[Path, Path]]:
    """identity -> (certificate path, key path), from a directory write_certs made."""
    cert_dir = Path(cert_dir)
    path = cert_dir / INDEX_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(str(path), NO_VALUE, f"not a certificate index ({err})") from None
    if doc.get("format_version") != INDEX_FORMAT_VERSION:
        raise ConfigError(
            f"{path}:format_version",
            doc.get("format_version"),
            f"expected {INDEX_FORMAT_VERSION}",
        )
    from fedsllm.security.identity import parse_identity

    return {
        parse_identity(e["identity"]): (cert_dir / e["cert"], cert_dir / e["key"])
        for e in doc["identities"]
    }
