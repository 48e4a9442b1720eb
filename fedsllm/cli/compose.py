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
    parser.set_defaults(func=compose_command)


def compose_command(args: argparse.Namespace) -> int:
    from fedsllm.config import load_scenario
    from fedsllm.deploy.compose import build_compose, compose_text, header, resolved_scenario_json

    overrides = shared_flag_overrides(args)
    if args.links == "tc":
        # Each container is a network namespace of its own, as under `run --network netns`.
        overrides += ["run.network='netns'", "link.backend='tc'"]
    scenario = load_scenario(args.scenario, overrides)
    packaged = args.scenario is None and not overrides and scenario.link.backend == "token"
    doc = build_compose(
        scenario,
        links=args.links,
        scenario_json=None if packaged else resolved_scenario_json(scenario),
    )
    text = compose_text(doc, header(scenario, args.links))
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK
