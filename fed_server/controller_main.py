"""`python -m fed_server.controller_main`: the allocation controller as a process of its own.

Parses arguments, loads the resolved scenario (scenario.json as the launcher
writes it), plans the run, publishes round 0 at once, and serves the
Controller (and the health service) until SIGTERM or SIGINT; then it closes
the controller so every Subscribe stream ends, and stops with a grace
period. The fed server can host the same Controller in-process instead.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedsllm.roles import role_main

log = logging.getLogger("fed_server.controller_main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedsllm.cli import add_log_level_arg

    parser = argparse.ArgumentParser(
        prog="python -m fed_server.controller_main", description=__doc__
    )
    parser.add_argument(
        "--scenario-json",
        "--scenario",
        dest="scenario_json",
        required=True,
        help="resolved scenario.json written by the launcher, or a scenario TOML file",
    )
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port to serve on")
    parser.add_argument(
        "--run-dir",
        default="",
        help="run directory; allocations are traced to RUN_DIR/trace/controller.jsonl "
        "(default: no trace)",
    )
    add_log_level_arg(parser, "INFO")
    return parser.parse_args(argv)


@role_main(log)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(args.log_level, "controller")
    from fedsllm.roles import install_stop_signals

    # First: a SIGTERM while the servers start (the launcher stopping a run
    # early) is a clean stop once they are up, not the default death.
    install_stop_signals()
    from fed_server.controller import Controller
    from fed_server.controller_service import serve_controller
    from fedsllm.bootstrap import Setting, SettingError
    from fedsllm.errors import AllocationError, ConfigError
    from fedsllm.roles import bindable, binding, load_resolved_scenario, wait_for_stop
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import security_from_env, stop_server

    try:
        # This process's credentials (FEDSLLM_TLS_*, FEDSLLM_PEER_TOKENS), for its server.
        security = security_from_env()
    except ConfigError as err:
        log.error("%s", err)
        return 2
    bind = bindable(Setting(args.bind, "--bind"))  # refused before the run is planned
    scenario, _scenario_hash = load_resolved_scenario(args.scenario_json)
    tracer = None
    if args.run_dir:
        tracer = Tracer(Path(args.run_dir) / "trace" / "controller.jsonl", "controller")
    try:
        controller = Controller(scenario, tracer=tracer)
        controller.start_round(0)
    except (ConfigError, AllocationError) as err:
        log.error("cannot plan the run: %s", err)
        if tracer is not None:
            tracer.close()
        return 2
    try:
        with binding("--bind", bind):
            server, port = serve_controller(controller, bind, security)
    except SettingError:
        controller.close()
        if tracer is not None:
            tracer.close()
        raise
    log.info("serving Controller on port %d", port)
    wait_for_stop()
    controller.close()
    stop_server(server, grace_s=2.0)
    if tracer is not None:
        tracer.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
