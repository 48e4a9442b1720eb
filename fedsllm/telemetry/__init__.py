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
