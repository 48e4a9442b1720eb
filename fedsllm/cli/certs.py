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
            "main_server, controller, launcher and client_0 .. client_{K-1}, an EC P-256 "
            "certificate (<name>.pem) and key (<name>.key, mode 0600), plus index.json. "
            "Each certificate names its identity in a URI SAN (fedsllm://client/3) and is "
            "valid for localhost, 127.0.0.1 and its compose service name (client-3). The "
            "CA key is not kept: to add clients, issue a new DIR. Prints DIR."
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
    parser.set_defaults(func=_certs)


def _certs(args: argparse.Namespace) -> int:
    from fedsllm.security.certs import write_certs

    write_certs(args.out_dir, args.clients)
    print(args.out_dir)
    return 0
