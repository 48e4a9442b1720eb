"""`fedsllm certs DIR [--clients K]`: a CA and a certificate + key per role and client.

Argument parsing only; the work is `fedsllm.security.certs.write_certs`,
imported when the command runs so that `fedsllm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create a CA and mutual-TLS certificates for every role and client",
        description=(
            "Write into DIR (new or empty) a CA certificate (ca.pem) and, for fed_server, "
            "main_server, controller, launcher, watcher (read-only: may only follow the "
            "telemetry and read status) and client_0 .. client_{K-1}, an EC P-256 "
            "certificate (<name>.pem) and key (<name>.key, mode 0600), plus index.json. "
            "Each certificate names its identity in a URI SAN (fedsllm://client/3) and is "
            "valid for localhost, 127.0.0.1, its compose service name (client-3) and every "
            "--host. The CA key is not kept: to add clients, issue a new DIR. Prints DIR."
        ),
    )
    parser.add_argument("out_dir", metavar="DIR", help="output directory (absent or empty)")
    parser.add_argument(
        "--clients",
        type=int,
        default=3,
        help="number of client certificates, client_0 .. client_{K-1} (default 3, "
        "the default scenario's clients.num_clients)",
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="a host name or IP address the roles dial each other by, across machines "
        "(fed-host, 10.0.0.5); added to every certificate (repeatable)",
    )
    parser.set_defaults(func=_certs)


def split_hosts(hosts: list[str]) -> tuple[list[str], list[str]]:
    """--host values as (DNS names, IP addresses); ConfigError naming --host for
    one that is neither (empty, or with a port or a scheme)."""
    import ipaddress
    import re

    from fedsllm.errors import ConfigError

    names, ips = [], []
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ConfigError("--host", host, "must be a host name or an IP address, no port")
        names.append(host)
    return names, ips


def _certs(args: argparse.Namespace) -> int:
    from fedsllm.security.certs import write_certs

    names, ips = split_hosts(args.host)
    write_certs(args.out_dir, args.clients, extra_dns_names=names, extra_ip_addresses=ips)
    print(args.out_dir)
    return 0
