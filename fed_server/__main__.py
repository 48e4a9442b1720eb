"""`python -m fed_server`: the federated server process.

Parses arguments, loads the resolved scenario, resumes from the run
directory's checkpoint, serves FedServer (and the health service) until
SIGTERM, then stops with a grace period.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("fed_server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedsllm.roles import role_arg_parser

    parser = role_arg_parser("python -m fed_server", __doc__)
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port to serve on")
    parser.add_argument(
        "--control-bind",
        default="127.0.0.1:0",
        help="host:port of the controller service (allocation policies only)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(args.log_level, "fed_server")
    from fed_server.checkpoint import load_checkpoint
    from fed_server.rounds import RoundState
    from fed_server.service import FedServerService
    from fedsllm.proto import fed_server_pb2_grpc
    from fedsllm.roles import load_resolved_scenario, wait_for_stop
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import create_server, stop_server

    scenario, scenario_hash = load_resolved_scenario(args.scenario_json)
    run_dir = Path(args.run_dir)
    tracer = Tracer(run_dir / "trace" / "fed_server.jsonl", "fed_server")
    if not (run_dir / "scenario.json").exists():
        # Started without the launcher (docker compose): leave the resolved
        # scenario where `fedsllm report` and `fedsllm export` look for it.
        from fedsllm.launch import write_scenario

        run_dir.mkdir(parents=True, exist_ok=True)
        write_scenario(run_dir, scenario)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint.completed_round >= 0:
        log.info("resuming after round %d from %s", checkpoint.completed_round, run_dir)
    num_rounds = scenario.training.num_rounds
    num_local_steps = scenario.training.num_local_steps
    controller = None
    if scenario.policy.name != "fixed_steps":
        from fed_server.controller import Controller

        # The plan (eta, n, N) is fixed for the run; every round re-solves the shares.
        controller = Controller(scenario, tracer=tracer)
        num_rounds = controller.plan.num_rounds
        num_local_steps = controller.plan.num_local_steps
        if checkpoint.completed_round + 1 < num_rounds:
            # A resume after the last round has no round left to allocate.
            controller.start_round(checkpoint.completed_round + 1)

    def next_round(done: int) -> None:
        if controller is not None and done + 1 < num_rounds:
            controller.start_round(done + 1)

    state = RoundState(
        num_clients=scenario.clients.num_clients,
        num_rounds=num_rounds,
        run_dir=run_dir,
        tracer=tracer,
        checkpoint=checkpoint,
        deadline_s=scenario.training.round_deadline_s,
        min_clients=scenario.training.min_clients,
        on_aggregated=next_round,
    )
    pace_down = None
    if controller is not None and scenario.link.backend == "token":
        from fedsllm.roles import build_role_shaper, pace_downlink

        shaper = build_role_shaper(scenario)

        def pace_down(client_id: int, nbytes: int, new_message: bool) -> None:
            # The global adapter crosses client k's downlink at the rate the
            # controller allocated it (0 = unlimited).
            current = controller.current(client_id)
            rate = current.downlink_bps if current is not None else 0.0
            pace_downlink(shaper, client_id, rate, nbytes, new_message)

    service = FedServerService(
        state,
        scenario_hash,
        num_local_steps,
        max_adapter_bytes=256 * 2**20,
        chunk_bytes=scenario.link.chunk_bytes,
        pace_down=pace_down,
    )
    server, port = create_server(
        args.bind, [lambda s: fed_server_pb2_grpc.add_FedServerServicer_to_server(service, s)]
    )
    log.info("serving FedServer on port %d", port)
    control_server = None
    if controller is not None:
        from fed_server.controller_service import serve_controller

        # Its own port: under tc, control traffic stays out of the shaped class
        # while adapter transfers to the fed server stay shaped.
        control_server, control_port = serve_controller(controller, args.control_bind)
        log.info("serving Controller on port %d (policy %s)", control_port, scenario.policy.name)

    wait_for_stop(tick=state.poll_deadline)
    if controller is not None:
        controller.close()  # ends every Subscribe stream
    if control_server is not None:
        stop_server(control_server, grace_s=1.0)
    stop_server(server, grace_s=2.0)
    tracer.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
