"""`fedsllm compose`: write the docker compose file of a scenario.

The file runs the fed server (with the controller), the main server, one
container per client and the report, with start order following gRPC health
and every container exiting on its own; `docker compose up --build
--abort-on-container-failure` returns 0 once the report is written in the
run-data volume. The checked-in docker-compose.yml is the output for the
default scenario.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedsllm.cli import EXIT_OK, add_scenario_args
from fedsllm.cli import flag_overrides as shared_flag_overrides
from fedsllm.errors import NO_VALUE, ConfigError


def register(sub: Any) -> None:
    from fedsllm.deploy.compose import LINKS

    parser = sub.add_parser(
        "compose", help="write the docker compose file of a scenario", description=__doc__
    )
    add_scenario_args(parser)
    parser.add_argument("--clients", type=int, help="number of clients K (clients.num_clients)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="global rounds (training.num_rounds under fixed_steps, else policy.max_rounds)",
    )
    parser.add_argument(
        "--links",
        choices=LINKS,
        default="token",
        help="token: paced in process, no privileges (default); tc: clients get NET_ADMIN "
        "and shape their own uplink and downlink (ifb) with tc",
    )
    parser.add_argument("--out", help="compose file to write (default: standard output)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every channel: issue a CA and one certificate per service into "
        "certs/ next to --out (required), each service mounting only its own key; without "
        "it, services run plain gRPC with --insecure and a token each, written into "
        "secrets/ next to --out (each service mounting only its own, the servers the "
        "tokens they accept)",
    )
    parser.set_defaults(func=compose_command)


def compose_command(args: argparse.Namespace) -> int:
    from fedsllm.config import load_scenario
    from fedsllm.deploy.compose import build_compose, compose_text, header, resolved_scenario_json

    overrides = shared_flag_overrides(args)
    if args.links == "tc":
        # Each container is a network namespace of its own, as under `run --network netns`.
        overrides += ["run.network='netns'", "link.backend='tc'"]
    scenario = load_scenario(args.scenario, overrides)
    if args.out and Path(args.out).is_dir():  # checked before secrets/ or certs/ go next to it
        raise ConfigError("--out", str(args.out), "is a directory; give the compose file's path")
    packaged = args.scenario is None and not overrides and scenario.link.backend == "token"
    tls_dir = None
    if args.tls:
        tls_dir = _issue_certs(args.out, scenario.clients.num_clients)
    else:
        _issue_tokens(args.out, scenario.clients.num_clients)
    doc = build_compose(
        scenario,
        links=args.links,
        scenario_json=None if packaged else resolved_scenario_json(scenario),
        tls_dir=tls_dir,
    )
    text = compose_text(doc, header(scenario, args.links, tls=args.tls))
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _issue_certs(out: str | None, num_clients: int) -> str:
    """Write certs/ next to the compose file; returns its path as the file names it.

    The directory is 0700 (no other host user reaches the keys); the keys are
    made readable inside it (0644) because the containers run as another uid
    (the image's fedsllm user) and each mounts only its own key file."""
    import os

    from fedsllm.security.certs import write_certs

    if not out:
        raise ConfigError("--tls", NO_VALUE, "needs --out: the certificates go next to the file")
    cert_dir = Path(out).resolve().parent / "certs"
    write_certs(cert_dir, num_clients)
    cert_dir.chmod(0o700)
    for key in cert_dir.glob("*.key"):
        os.chmod(key, 0o644)
    return "./certs"


def _issue_tokens(out: str | None, num_clients: int) -> None:
    """Write secrets/ (fedsllm.deploy.compose.SECRETS_DIR) next to the compose
    file: a token per service (fedsllm.security.run_secrets.write_compose_secrets).
    Without --out the file goes to standard output and nothing is written: said
    on standard error, since `up` needs secrets/ next to wherever it is saved."""
    from fedsllm.deploy.compose import SECRETS_DIR
    from fedsllm.security.run_secrets import write_compose_secrets

    if not out:
        print(
            f"fedsllm compose: no --out, so no {SECRETS_DIR.removeprefix('./')}/ was written; "
            "every service mounts its token from there: run with --out FILE to create it",
            file=sys.stderr,
        )
        return
    write_compose_secrets(Path(out).resolve().parent / SECRETS_DIR.removeprefix("./"), num_clients)
