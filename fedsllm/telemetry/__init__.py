"""Typed telemetry: records (records.py), their proto form (codec.py), a role's
spooling sender (sender.py), the fed server's collector (collector.py), and the
gRPC servicer, push transport and live watcher (service.py).

Import the submodules directly; this package imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

SPOOL_DIR = "spool"
"""Folder of a role's own directory that holds its telemetry spool."""

TELEMETRY_SOCKET = "telemetry.sock"
"""Unix socket in the fed server's run directory on which it also serves
Telemetry, so a tool on the same host watches a run whatever network the
roles live in (`fedsllm run`'s progress under --network netns)."""


def spool_dir(role_dir: Path) -> Path:
    return role_dir / SPOOL_DIR


def socket_address(run_dir: Path) -> str | None:
    """The gRPC address of the run's telemetry socket; None when its path is too
    long for a unix socket (108 bytes on Linux)."""
    path = str(run_dir.resolve() / TELEMETRY_SOCKET)
    return None if len(path.encode()) > 100 else f"unix:{path}"


ENDPOINTS_FILE = "endpoints.json"
"""RUN_DIR/endpoints.json, written by the fed server each time it starts
serving: where a tool reaches it, with the real ports (a launched run binds
port 0). Keys: fed_address and control_address (host:port as bound; 0.0.0.0
means every address of the fed server's host; under --network netns they are
inside the run's namespaces), telemetry_socket (the unix socket's gRPC
address, null when there is none), pid (the fed server's)."""


def bound_address(bind: str, port: int) -> str:
    """`bind` (host:port, [v6]:port) with the port the server actually got."""
    host = bind.rpartition(":")[0]
    return f"{host}:{port}"


def write_endpoints(
    run_dir: Path, *, fed_address: str, control_address: str, telemetry_socket: str | None
) -> Path:
    """Write RUN_DIR/endpoints.json (atomically: a reader sees the old file or the new)."""
    import json
    import os

    from fedsllm.state.format import atomic_write

    doc = {
        "fed_address": fed_address,
        "control_address": control_address,
        "telemetry_socket": telemetry_socket,
        "pid": os.getpid(),
    }
    path = run_dir / ENDPOINTS_FILE
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def read_endpoints(run_dir: Path) -> dict[str, object] | None:
    """RUN_DIR/endpoints.json as written by write_endpoints; None when there is
    none (no fed server served this directory yet) or it is unreadable."""
    import json

    try:
        doc = json.loads((run_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
