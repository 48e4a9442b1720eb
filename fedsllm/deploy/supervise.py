"""`python -m fedsllm.deploy.supervise [options] -- ROLE COMMAND...`: start one
role inside a compose container.

- `--tc`: set up tc on this container's own interface (fedsllm.deploy.links),
  then become the role (exec). For `--links tc` clients (root, NET_ADMIN).
- `--stop-when-done FED_ADDRESS --clients NAMES`: run the role as a child, and
  once the fed server at FED_ADDRESS reports the run finished and every client
  container has exited (its name no longer resolves on the compose network),
  stop it with SIGTERM, as `fedsllm run` stops the servers after the clients.
  Exits with the role's exit status. This is what lets every container of the
  compose file exit on its own, in order, so that `docker compose up
  --abort-on-container-failure` returns 0 once the report is written, and
  non-zero as soon as any role fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("supervise")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fedsllm.deploy.supervise", description=__doc__)
    parser.add_argument("--tc", action="store_true", help="shape this container's link with tc")
    parser.add_argument("--stop-when-done", metavar="FED_ADDRESS", default="")
    parser.add_argument("--clients", default="", help="comma-separated client service names")
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the role's command")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("a role command is required after --")
    if args.stop_when_done and not args.clients:
        parser.error("--stop-when-done needs --clients")
    return args


def resolves(name: str) -> bool:
    """Whether `name` has an address (compose drops an exited container's name)."""
    try:
        socket.getaddrinfo(name, None)
    except socket.gaierror:
        return False
    return True


def run_finished(fed_address: str, security: Any = None) -> bool:
    """The fed server's own word that the last round has been aggregated, asked
    with the supervised role's credentials `security` (fedsllm.wire.rpc.Security)."""
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc
    from fedsllm.wire.rpc import make_channel

    channel = make_channel(fed_address, security)
    try:
        stub = fed_server_pb2_grpc.FedServerStub(channel)
        return bool(stub.Status(fed_server_pb2.StatusRequest(), timeout=5.0).finished)
    except Exception:  # not up yet, or stopping: not finished as far as we know
        return False
    finally:
        channel.close()


def wait_until_done(
    fed_address: str,
    clients: Sequence[str],
    alive: Callable[[], bool],
    *,
    poll_s: float = 1.0,
    finished: Callable[[str], bool] = run_finished,
    resolve: Callable[[str], bool] = resolves,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Block until the run is finished and every client is gone (True), or the
    role exited by itself first (False)."""
    while alive():
        if finished(fed_address) and not any(resolve(c) for c in clients):
            return True
        sleep(poll_s)
    return False


def supervise(args: argparse.Namespace) -> int:
    from fedsllm.wire.rpc import security_from_env

    # The supervised role's own credentials (its FEDSLLM_* variables).
    security = security_from_env()
    proc = subprocess.Popen(args.command)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    clients = [c for c in args.clients.split(",") if c]
    if wait_until_done(
        args.stop_when_done,
        clients,
        lambda: proc.poll() is None,
        poll_s=args.poll_s,
        finished=lambda address: run_finished(address, security),
    ):
        log.info("run finished and clients gone: stopping %s", args.command[:3])
        proc.terminate()
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervise: %(message)s")
    if args.tc:
        from fedsllm.deploy.links import setup
        from fedsllm.errors import LinkError

        try:
            setup()
        except LinkError as err:
            print(f"supervise: {err}", file=sys.stderr)
            return 4
    if args.stop_when_done:
        return supervise(args)
    os.execvp(args.command[0], args.command)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
