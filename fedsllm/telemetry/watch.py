"""Follow a run's telemetry from its run directory, as the read-only watcher.

`watch_run(run_dir, emit)` finds where the run's collector is served (the
run's unix socket RUN_DIR/telemetry.sock, else the fed address in
RUN_DIR/endpoints.json), with which credential (FEDSLLM_TOKEN_FILE /
FEDSLLM_TOKEN / FEDSLLM_TLS_* when set, else RUN_DIR/watcher/), follows it
with a TelemetryWatcher (which replays the records so far, then goes on live,
across fed server restarts) and hands every record to `emit`, until the run
ends: the fed server ended the stream (its collector closed) and no launcher
runs RUN_DIR. The command line is fedsllm.cli.watch; what to do with the
records is the caller's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError, FedsLLMError
from fedsllm.telemetry.records import TelemetryRecord

log = logging.getLogger(__name__)

WAIT_S = 30.0
"""How long to wait for a fed server to answer when no launcher runs RUN_DIR
(a fed server started by hand, coming up or restarting)."""
HEALTH_EVERY_S = 1.0
"""How often to ask whether a fed server still serves, while none is known to."""
RUN_DIR_ARG = "RUN_DIR"
"""How messages name the command's argument."""


class RunGone(FedsLLMError):
    """Nothing serves the run's telemetry and no launcher runs it (exit 1)."""


def check_run_dir(path: str | Path) -> Path:
    """`path` as a run directory (it holds scenario.json, which the launcher and
    a fed server write first), absolute; ConfigError naming RUN_DIR otherwise."""
    run_dir = Path(path).expanduser()
    if not run_dir.exists():
        raise ConfigError(RUN_DIR_ARG, str(path), "does not exist")
    if not run_dir.is_dir():
        raise ConfigError(RUN_DIR_ARG, str(path), "is not a directory")
    if not (run_dir / "scenario.json").is_file():
        raise ConfigError(
            RUN_DIR_ARG,
            str(path),
            "is not a run directory (no scenario.json; give the directory fedsllm run "
            "or the fed server's --run-dir wrote)",
        )
    return run_dir.resolve()


def launcher_running(run_dir: Path) -> bool:
    """Whether a launcher runs RUN_DIR now: RUN_DIR/launcher.lock holds the pid of
    a live process (the launcher empties it when it ends). Read only: the lock
    itself is never taken, so a launcher starting meanwhile is not disturbed."""
    from fedsllm.launch import LOCK_FILE

    try:
        text = (run_dir / LOCK_FILE).read_text().strip()
    except OSError:
        return False
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except (OverflowError, ValueError):
        return False
    return True


def watch_address(run_dir: Path) -> str:
    """Where to subscribe: the run's unix socket (it works whatever network the
    roles are in, and never needs TLS) unless the fed server said it has none,
    else the fed address from RUN_DIR/endpoints.json (0.0.0.0 dialled as loopback)."""
    from fedsllm.telemetry import ENDPOINTS_FILE, read_endpoints, socket_address

    socket = socket_address(run_dir)
    ends = read_endpoints(run_dir) or {}
    if socket is not None and (not ends or ends.get("telemetry_socket")):
        return socket
    fed = ends.get("fed_address")
    if isinstance(fed, str) and fed:
        host, _, port = fed.rpartition(":")
        dial = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
        return f"{dial}:{port}"
    if socket is not None:
        return socket
    raise ConfigError(
        RUN_DIR_ARG,
        str(run_dir),
        f"its path is too long for a unix socket and it has no {ENDPOINTS_FILE} "
        "(no fed server served it yet)",
    )


def watch_security(run_dir: Path, env: Mapping[str, str] | None = None) -> Any:
    """The watcher's credentials (fedsllm.wire.rpc.Security): from FEDSLLM_TOKEN_FILE,
    FEDSLLM_TOKEN or FEDSLLM_TLS_* when any is set (a run started by hand), else
    from RUN_DIR/watcher/ (fedsllm run writes it); None when neither has any."""
    from fedsllm.security.credentials import ENV_VARS
    from fedsllm.security.run_secrets import read_watcher_security
    from fedsllm.wire.rpc import TOKEN_ENV, TOKEN_FILE_ENV, security_from_env

    env = os.environ if env is None else env
    if any(env.get(v) for v in (TOKEN_ENV, TOKEN_FILE_ENV, *ENV_VARS.values())):
        own = {k: v for k, v in env.items() if k != "FEDSLLM_PEER_TOKENS"}
        return security_from_env(own)
    return read_watcher_security(run_dir)


def _serving(address: str, security: Any) -> bool:
    """Whether a server answers a health check at `address` now (no credentials
    needed: the health service is open)."""
    from fedsllm.wire.rpc import UnreachableError, wait_healthy

    try:
        wait_healthy(address, timeout_s=1.0, security=security)
    except (UnreachableError, TimeoutError):
        return False
    return True


def watch_run(
    run_dir: Path,
    emit: Callable[[TelemetryRecord], None],
    *,
    env: Mapping[str, str] | None = None,
    wait_s: float = WAIT_S,
    poll_s: float = 0.2,
) -> None:
    """Hand every record of the run at `run_dir` (checked with check_run_dir) to
    `emit`, from the first, until the run ends. Raises ConfigError for a run
    without watcher credentials, the SettingError of a refused credential
    (naming its file or variable), RunGone when for `wait_s` no fed server
    answers and no launcher runs the directory."""
    from fedsllm.telemetry.service import TelemetryWatcher

    started = time.monotonic()
    security = watch_security(run_dir, env)
    while security is None and launcher_running(run_dir):
        if time.monotonic() - started > wait_s:
            break
        time.sleep(poll_s)  # a launcher writes RUN_DIR/watcher/ as its run starts
        security = watch_security(run_dir, env)
    if security is None:
        raise ConfigError(
            RUN_DIR_ARG,
            str(run_dir),
            "has no watcher/token (a fed server started by hand, or a run begun before "
            "watchers existed): give a token the fed server accepts as watcher with "
            "FEDSLLM_TOKEN_FILE",
        )
    address = watch_address(run_dir)
    log.info("watching %s", address)
    watcher = TelemetryWatcher(address, security=security, report_refusal=False)
    unserved_since: float | None = None
    asked_at = -HEALTH_EVERY_S
    try:
        while True:
            for rec in watcher.poll():
                emit(rec)
            if watcher.refused is not None:
                raise watcher.refused
            live = launcher_running(run_dir)
            if watcher.ended.is_set() and not live:
                for rec in watcher.poll():
                    emit(rec)
                return
            now = time.monotonic()
            if live:
                unserved_since = None  # the launcher ends the run, and says how
            elif now - asked_at >= HEALTH_EVERY_S:
                asked_at = now
                if _serving(address, security):
                    unserved_since = None
                elif unserved_since is None:
                    unserved_since = now
                elif now - unserved_since > wait_s:
                    raise RunGone(
                        f"no fed server answers at {address} and no launcher runs {run_dir} "
                        f"(waited {wait_s:g} s): the run is over or not started; its records "
                        f"are in {run_dir / 'trace'}"
                    )
            time.sleep(poll_s)
    finally:
        watcher.close()
