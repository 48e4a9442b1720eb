"""`python -m fed_server`: the federated server process.

Parses arguments, loads the resolved scenario, resumes from the run
directory's store (RUN_DIR/state: membership, the open round and the updates
it accepted, the global adapter, the controller's plan and registrations),
serves FedServer, RunInfo (the scenario and the base
for the other roles, which share nothing with it but gRPC), the telemetry
collector (and the health service) until SIGTERM, then stops with a grace
period. The run directory is the one place the run is assembled: traces,
adapters (the main server's arrives over the wire), the served base.

The collector (fedsllm.telemetry) keeps every role's records in
RUN_DIR/trace/; it is served on the fed server's port, on the control port
(unshaped under tc) and on RUN_DIR/telemetry.sock (for watchers on this host,
whatever network namespace they are in). RUN_DIR/endpoints.json says where
(fedsllm.telemetry.write_endpoints), with the ports actually bound.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsllm.roles import role_main

if TYPE_CHECKING:
    import grpc

    from fedsllm.telemetry.service import TelemetryService

log = logging.getLogger("fed_server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedsllm.roles import role_arg_parser

    parser = role_arg_parser("python -m fed_server", __doc__, fed_server=True)
    parser.add_argument(
        "--bind",
        default=None,
        help="host:port to serve on (or FEDSLLM_FED_BIND, else the scenario's "
        "run.fed_address, else 127.0.0.1:0)",
    )
    parser.add_argument(
        "--control-bind",
        default=None,
        help="host:port of the control services: telemetry, run info, and the controller "
        "(or FEDSLLM_CONTROL_BIND, else run.control_address, else 127.0.0.1:0)",
    )
    parser.add_argument(
        "--telemetry-wait-s",
        type=float,
        default=6.0,
        help="at shutdown, how long to wait for the roles still sending telemetry "
        "to send their last records (default 6; a role silent for 2 s is not waited for)",
    )
    return parser.parse_args(argv)


@role_main(log)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(args.log_level, "fed_server")
    from fedsllm.roles import install_stop_signals

    # First: a SIGTERM while the servers start (the launcher stopping a run
    # early) is a clean stop once they are up, not the default death.
    install_stop_signals()
    from fed_server.rounds import RoundState, fed_server_store
    from fed_server.service import FedServerService
    from fedsllm.bootstrap import SettingError, parse_bind, parse_dir, parse_file, resolve
    from fedsllm.errors import NO_VALUE
    from fedsllm.proto import fed_server_pb2_grpc
    from fedsllm.roles import bindable, binding, load_resolved_scenario, wait_for_stop
    from fedsllm.telemetry.collector import TelemetryCollector
    from fedsllm.telemetry.service import TELEMETRY_SERVICE, TelemetryService, add_to_server
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import CONTROLLER_SERVICE, FED_SERVER_SERVICE, create_server, stop_server

    try:
        scenario_file = resolve(
            "--scenario", args.scenario_json, "FEDSLLM_SCENARIO", parse=parse_file
        )
        if scenario_file.value is None:
            raise SettingError("--scenario", NO_VALUE, "required (or FEDSLLM_SCENARIO)")
        run_dir_setting = resolve("--run-dir", args.run_dir, "FEDSLLM_RUN_DIR", parse=parse_dir)
        if run_dir_setting.value is None:
            raise SettingError("--run-dir", NO_VALUE, "required (or FEDSLLM_RUN_DIR)")
        scenario, scenario_hash = load_resolved_scenario(scenario_file.value)
        bind_setting = resolve(
            "--bind", args.bind, "FEDSLLM_FED_BIND", "run.fed_address",
            scenario.run.fed_address, default="127.0.0.1:0", parse=parse_bind,
        )  # fmt: skip
        control_setting = resolve(
            "--control-bind", args.control_bind, "FEDSLLM_CONTROL_BIND", "run.control_address",
            scenario.run.control_address, default="127.0.0.1:0", parse=parse_bind,
        )  # fmt: skip
        # Refused now, before the minutes the base and the plan may take.
        bind, control_bind = bindable(bind_setting), bindable(control_setting)
    except SettingError as err:
        log.error("%s", err)
        return 2
    run_dir = Path(run_dir_setting.value)
    from fedsllm.errors import ConfigError
    from fedsllm.roles import role_security

    try:
        security = role_security(args)
        for address in (bind, control_bind):
            warning = security.check_bind(address)
            if warning is not None:
                log.warning("%s", warning)
    except ConfigError as err:  # SettingError included
        log.error("%s", err)
        return 2
    log.info("channels: %s", security.describe())
    # RUN_DIR/state: membership, rounds, accepted updates, global adapters and
    # the controller's state, committed before each answer (fed_server/rounds.py).
    # Read before anything is written: a file there that cannot be read
    # (StoreFormatError) is one line naming it, exit 2 (role_main).
    store = fed_server_store(run_dir)
    saved = store.load()
    # Resumes from the records a previous fed server of this run left there.
    collector = TelemetryCollector(run_dir / "trace")
    telemetry = TelemetryService(collector)
    tracer = Tracer(None, "fed_server", sink=collector.emit_local)
    if not (run_dir / "scenario.json").exists():
        # Started without the launcher (docker compose): leave the resolved
        # scenario where `fedsllm report` and `fedsllm export` look for it.
        from fedsllm.launch import write_scenario

        run_dir.mkdir(parents=True, exist_ok=True)
        write_scenario(run_dir, scenario)
    num_rounds = scenario.training.num_rounds
    num_local_steps = scenario.training.num_local_steps
    controller = None
    if scenario.policy.name != "fixed_steps":
        from fed_server.controller import Controller

        # The plan (eta, n, N) is fixed for the run; every round re-solves the shares.
        # Its state is saved on every change and restored here, so a restarted fed
        # server keeps the plan and the registrations, and allocation versions go on.
        controller = Controller(scenario, tracer=tracer, on_change=store.save_controller)
        if saved.controller is not None:
            controller.restore(saved.controller)
        num_rounds = controller.plan.num_rounds
        num_local_steps = controller.plan.num_local_steps

    def next_round(done: int) -> None:
        if controller is not None and done + 1 < num_rounds:
            controller.start_round(done + 1)

    state = RoundState(
        num_clients=scenario.clients.num_clients,
        num_rounds=num_rounds,
        run_dir=run_dir,
        tracer=tracer,
        deadline_s=scenario.training.round_deadline_s,
        min_clients=scenario.training.min_clients,
        on_aggregated=next_round,
        template=_adapter_template(scenario),
        store=store,
    )
    if controller is not None and not state.finished:
        # A resume after the last round has no round left to allocate.
        controller.start_round(state.current_round)
    pace_down = None
    if controller is not None and scenario.link.backend == "token":
        from fedsllm.roles import build_role_shaper, pace_downlink

        shaper = build_role_shaper(scenario)

        def pace_down(client_id: int, nbytes: int, new_message: bool) -> None:
            # The global adapter crosses client k's downlink at the rate the
            # controller allocated it (0 = unlimited); once stopping, unpaced.
            current = controller.current(client_id)
            rate = current.downlink_bps if current is not None else 0.0
            pace_downlink(shaper, client_id, rate, nbytes, new_message)

    # Peers fetch the scenario and (a pretrained) base from here and present
    # both hashes at Join.
    from fed_server.runinfo import RunInfoService
    from fedsllm.bootstrap import RUN_INFO_SERVICE
    from fedsllm.roles import serve_base

    base_hash, base_file = serve_base(scenario, run_dir)
    if base_file is not None:
        log.info("base %s served from %s", base_hash, base_file)
    run_info = RunInfoService(
        scenario.to_dict(), scenario_hash, base_hash, base_file, scenario.link.chunk_bytes
    )

    def add_run_info(s: grpc.Server) -> None:
        fed_server_pb2_grpc.add_RunInfoServicer_to_server(run_info, s)

    service = FedServerService(
        state,
        scenario_hash,
        num_local_steps,
        max_adapter_bytes=256 * 2**20,
        chunk_bytes=scenario.link.chunk_bytes,
        pace_down=pace_down,
        base_hash=base_hash,
        run_dir=run_dir,
    )
    # The control services (telemetry, run info, the controller) are served on
    # the fed port too, for a role told only the fed address, and on a port of
    # their own: under tc, control traffic there stays out of the shaped class
    # while adapter transfers to the fed server stay shaped.
    control = [add_to_server(telemetry), add_run_info]
    control_names = [TELEMETRY_SERVICE, RUN_INFO_SERVICE]
    if controller is not None:
        from fed_server.controller_service import ControllerService
        from fedsllm.proto import controller_pb2_grpc

        controller_service = ControllerService(controller)
        control.append(
            lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(controller_service, s)
        )
        control_names.append(CONTROLLER_SERVICE)
    with binding(bind_setting.source, bind):
        server, port = create_server(
            bind,
            [lambda s: fed_server_pb2_grpc.add_FedServerServicer_to_server(service, s), *control],
            service_names=(FED_SERVER_SERVICE, *control_names),
            security=security,
        )
    log.info("serving FedServer on port %d, with %s", port, ", ".join(control_names))
    try:
        with binding(control_setting.source, control_bind):
            control_server, control_port = create_server(
                control_bind, control, service_names=control_names, security=security
            )
    except SettingError:
        stop_server(server, grace_s=0)
        raise
    log.info("serving %s on port %d", ", ".join(control_names), control_port)
    local_server = _serve_local_telemetry(run_dir, telemetry, security)
    # Where to reach this run (a launched run binds port 0): fedsllm watch and
    # other tools read it, so nobody digs the port out of a log.
    from fedsllm.telemetry import bound_address, socket_address, write_endpoints

    endpoints = write_endpoints(
        run_dir,
        fed_address=bound_address(bind, port),
        control_address=bound_address(control_bind, control_port),
        telemetry_socket=socket_address(run_dir) if local_server is not None else None,
    )
    log.info("endpoints in %s", endpoints)

    wait_for_stop(tick=state.poll_deadline)
    state.stop()  # every PullGlobal still waiting ends now with UNAVAILABLE
    if controller is not None:
        controller.close()  # ends every Subscribe stream
    # Roles stopping with us (the main server) send their last records now.
    still_open = collector.wait_final(
        args.telemetry_wait_s, exclude=("fed_server",), idle_s=min(2.0, args.telemetry_wait_s)
    )
    if still_open:
        log.warning(
            "telemetry of %s not closed after %.1f s; what they did not send stays in their spool",
            ", ".join(still_open),
            args.telemetry_wait_s,
        )
    tracer.close()
    collector.close()  # ends every telemetry watch
    if local_server is not None:
        stop_server(local_server, grace_s=0.5)
    stop_server(control_server, grace_s=1.0)
    stop_server(server, grace_s=2.0)
    log.info("stopped")
    return 0


def _adapter_template(scenario: object) -> dict | None:
    """What every client push must hold, from the model (never from a peer's
    first push); None (the first push sets it) when numpy cannot hold its dtype."""
    from fed_server.aggregate import template_from_spec
    from fedsllm.roles import client_adapter_template

    try:
        return template_from_spec(client_adapter_template(scenario))
    except ValueError as err:
        log.warning("no adapter template from the model: %s", err)
        return None


def _serve_local_telemetry(
    run_dir: Path, telemetry: TelemetryService, security: Any
) -> grpc.Server | None:
    """Telemetry on RUN_DIR/telemetry.sock (peers' tokens from `security`), or
    None when the path cannot be a unix socket (too long) or the bind fails."""
    from fedsllm.telemetry import TELEMETRY_SOCKET, socket_address
    from fedsllm.telemetry.service import TELEMETRY_SERVICE, add_to_server
    from fedsllm.wire.rpc import create_server

    address = socket_address(run_dir)
    if address is None:
        log.warning(
            "run directory path too long for %s; no local telemetry socket", TELEMETRY_SOCKET
        )
        return None
    (run_dir / TELEMETRY_SOCKET).unlink(missing_ok=True)  # left by an earlier fed server
    try:
        server, _ = create_server(
            address,
            [add_to_server(telemetry)],
            service_names=(TELEMETRY_SERVICE,),
            security=security,
        )
    except OSError as err:
        log.warning("no local telemetry socket: %s", err)
        return None
    log.info("serving Telemetry on %s", address)
    return server


if __name__ == "__main__":
    raise SystemExit(main())
