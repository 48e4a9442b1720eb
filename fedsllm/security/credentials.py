"""gRPC credentials from TLS files, where those files come from, and when
running without TLS is allowed.

`resolve_tls` picks each of the three files (CA, own certificate, own key) from
the first source that names it: a flag, then a FEDSLLM_TLS_* environment
variable, then the scenario's tls section. `load_tls` reads and checks them
(the key must match the certificate, the certificate must carry a fedsllm
identity), and `server_credentials` / `channel_credentials` build mutual TLS
from the result: the server requires and verifies a client certificate.
`check_insecure` is the rule for plain channels. Building servers and
channels stays in fedsllm.wire.rpc.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedsllm.errors import ConfigError
from fedsllm.security.identity import AuthenticationError, Identity, identity_from_certificate

TLS_FIELDS = ("ca", "cert", "key")
ENV_VARS = {"ca": "FEDSLLM_TLS_CA", "cert": "FEDSLLM_TLS_CERT", "key": "FEDSLLM_TLS_KEY"}
"""Environment variable naming each file."""
FLAG_NAMES = {"ca": "--tls-ca", "cert": "--tls-cert", "key": "--tls-key"}
"""How messages name each flag (the roles' flags, added when they are wired)."""
SCENARIO_SECTION = "tls"
"""Messages name a scenario field as tls.ca, tls.cert, tls.key."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TlsConfig:
    """Where this process's TLS files are, and which source named each."""

    ca: Path
    """PEM certificate of the CA every peer's certificate must be signed by."""
    cert: Path
    """PEM certificate of this process (its identity in a fedsllm:// URI SAN)."""
    key: Path
    """PEM private key of `cert`."""
    sources: tuple[str, str, str] = ("ca", "cert", "key")
    """The flag, variable or scenario field each of ca, cert, key came from (for messages)."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The loaded files, ready for grpc; `identity` is the one in `cert_pem`."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: Identity


def tls_config_for(cert_dir: str | Path, identity: Identity) -> TlsConfig:
    """The files `fedsllm certs` wrote for `identity` in `cert_dir`."""
    cert_dir = Path(cert_dir)
    return TlsConfig(
        ca=cert_dir / "ca.pem",
        cert=cert_dir / f"{identity.file_stem}.pem",
        key=cert_dir / f"{identity.file_stem}.key",
        sources=(str(cert_dir), str(cert_dir), str(cert_dir)),
    )


def resolve_tls(
    flags: Mapping[str, str | os.PathLike[str] | None] | None = None,
    env: Mapping[str, str] | None = None,
    scenario: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> TlsConfig | None:
    """Each of ca, cert, key from the flag, else the FEDSLLM_TLS_* variable,
    else the scenario's tls section; None when no source names any of them
    (plain channels, see check_insecure).

    `flags` and `scenario` map "ca"/"cert"/"key" to a path or None; `env`
    defaults to os.environ. Naming some files but not all three is a
    ConfigError listing where the missing ones can be given. Files are not
    read here (load_tls does).
    """
    env = os.environ if env is None else env
    found: dict[str, tuple[Path, str]] = {}
    for field in TLS_FIELDS:
        candidates = (
            ((flags or {}).get(field), FLAG_NAMES[field]),
            (env.get(ENV_VARS[field]) or None, ENV_VARS[field]),
            ((scenario or {}).get(field), f"{SCENARIO_SECTION}.{field}"),
        )
        for value, source in candidates:
            if value is not None and str(value) != "":
                found[field] = (Path(value), source)
                break
    if not found:
        return None
    missing = [f for f in TLS_FIELDS if f not in found]
    if missing:
        given = ", ".join(f"{found[f][1]}={found[f][0]}" for f in TLS_FIELDS if f in found)
        wanted = "; ".join(
            f"{FLAG_NAMES[f]} or {ENV_VARS[f]} or {SCENARIO_SECTION}.{f}" for f in missing
        )
        raise ConfigError(
            found[next(iter(found))][1],
            given,
            f"mutual TLS needs the CA, certificate and key together; also give {wanted}",
        )
    return TlsConfig(
        ca=found["ca"][0],
        cert=found["cert"][0],
        key=found["key"][0],
        sources=(found["ca"][1], found["cert"][1], found["key"][1]),
    )


def _read(path: Path, source: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(source, str(path), f"cannot read ({err.strerror})") from None


def load_tls(config: TlsConfig) -> TlsMaterial:
    """Read and check the three files; ConfigError names the source of a bad one.

    Checks: ca and cert are PEM certificates, key is a PEM private key that
    matches cert, and cert carries exactly one fedsllm:// identity. (Whether
    cert was signed by ca is the peers' check, at the handshake.)
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_source, cert_source, key_source = config.sources
    ca_pem = _read(config.ca, ca_source)
    cert_pem = _read(config.cert, cert_source)
    key_pem = _read(config.key, key_source)
    try:
        x509.load_pem_x509_certificate(ca_pem)
    except ValueError as err:
        raise ConfigError(ca_source, str(config.ca), f"not a PEM certificate ({err})") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise ConfigError(cert_source, str(config.cert), f"not a PEM certificate ({err})") from None
    try:
        identity = identity_from_certificate(cert_pem)
    except AuthenticationError as err:
        raise ConfigError(cert_source, str(config.cert), str(err)) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            key_source, str(config.key), f"not an unencrypted PEM private key ({err})"
        ) from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise ConfigError(key_source, str(config.key), f"is not the private key of {config.cert}")
    return TlsMaterial(ca_pem, cert_pem, key_pem, identity)


def server_credentials(material: TlsMaterial) -> grpc.ServerCredentials:
    """Mutual TLS for a server: it presents its certificate and requires and
    verifies the client's against the CA (no certificate: no connection)."""
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Mutual TLS for a channel: it verifies the server against the CA and
    presents this process's certificate. The server's certificate must name
    the host dialled (localhost, 127.0.0.1 or its compose service name);
    another name needs the channel option ``grpc.ssl_target_name_override``
    set to one of those (see target_name_option)."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )


def target_name_option(server: Identity) -> tuple[str, str]:
    """Channel option that verifies the server's certificate against the
    compose service name of `server` whatever address is dialled (a run across
    machines dialling IPs the certificates do not list)."""
    return ("grpc.ssl_target_name_override", server.service_name)


def _host_of(address: str) -> str:
    """The host part of a gRPC address: host:port, [v6]:port, dns:///host:port."""
    if "///" in address:
        address = address.split("///", 1)[1]
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") > 1:  # a bare IPv6 address without a port
        return address
    return address.rsplit(":", 1)[0] if ":" in address else address


def is_loopback(address: str) -> bool:
    """Whether `address` (as given to bind or dial) is reachable from this host only."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = _host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" / 0.0.0.0 handled above as not loopback


def check_insecure(address: str, allow_insecure: bool) -> str | None:
    """The rule for a plain (non-TLS) server or channel on `address`.

    Loopback: allowed, None. Elsewhere (0.0.0.0, a LAN IP, a host name): a
    ConfigError naming --insecure unless `allow_insecure`, in which case the
    warning text to put in the log and the report is returned.
    """
    if is_loopback(address):
        return None
    if not allow_insecure:
        raise ConfigError(
            "--insecure",
            address,
            "plain gRPC on a non-loopback address is refused: anyone on the network could "
            "read the traffic and pose as a peer; give TLS files (fedsllm certs DIR; "
            "--tls-ca/--tls-cert/--tls-key or FEDSLLM_TLS_*) or pass --insecure",
        )
    return (
        f"insecure gRPC on non-loopback address {address}: traffic is unencrypted and "
        "peers are identified by bearer tokens only (--insecure)"
    )
