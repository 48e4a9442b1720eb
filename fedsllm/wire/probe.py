"""`python -m fedsllm.wire.probe ADDRESS [--timeout S]`: exit 0 once the gRPC
server at ADDRESS reports SERVING on the standard health service, 1 otherwise.

The launcher runs it inside a network namespace to wait for a server it cannot
reach from the host namespace; docker compose healthchecks run it too. It
imports grpc only, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys

from fedsllm.errors import ConfigError
from fedsllm.wire.rpc import security_from_env, wait_healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsllm.wire.probe", description=__doc__)
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    parser.add_argument("--service", default="", help="health service name (default: server)")
    args = parser.parse_args(argv)
    try:
        # The prober's credentials (FEDSLLM_TLS_*, FEDSLLM_TOKEN*): a mutual TLS
        # server answers only a peer with a certificate.
        security = security_from_env()
        wait_healthy(args.address, args.timeout, args.service, security=security)
    except (TimeoutError, ConfigError) as err:
        print(f"probe: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
