"""The local launcher: the fed server, the main server and K clients as separate
OS processes on loopback, watched until they finish.

It owns process lifecycle only: run directory, ports, command lines, health
waits, failure detection, and stopping every process it started by its own
pid. Training logic lives in the roles; the summary is computed from the
trace files the roles write (fedsllm.summary).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fedsllm.config import ScenarioConfig

log = logging.getLogger(__name__)


def scenario_hash(scenario: ScenarioConfig) -> str:
    """Short stable hash of the resolved scenario; roles refuse peers with another."""
    text = json.dumps(scenario.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fresh_out_dir(out: str | Path | None, stem: str) -> Path:
    """OUT itself when given (absent or an empty directory), else runs/<stem>-<timestamp>;
    created, and returned absolute. Runs never write into a used directory."""
    if out:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            from fedsllm.errors import ConfigError

            raise ConfigError("--out", str(path), "exists and is not an empty directory")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stem}-{stamp}"
        suffix = 1
        while path.exists():
            path = Path("runs") / f"{stem}-{stamp}-{suffix}"
            suffix += 1
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def make_run_dir(out: str | Path | None, scenario: ScenarioConfig) -> Path:
    """A fresh run directory with its logs/, trace/ and adapters/ folders."""
    run_dir = fresh_out_dir(out, scenario.name)
    for sub in ("logs", "trace", "adapters"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


def write_scenario(run_dir: Path, scenario: ScenarioConfig) -> Path:
    path = run_dir / "scenario.json"
    doc = {"scenario_hash": scenario_hash(scenario), **scenario.to_dict()}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


@dataclass
class RoleProcess:
    """One started role process; stopped only through its own pid."""

    name: str
    cmd: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, num_lines: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-num_lines:])

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)


def role_env(scenario: ScenarioConfig) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(scenario.run.num_threads)
    env.update(
        {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    # The roles are top-level packages of this checkout; make them importable
    # even when fedsllm runs from a source tree that is not installed.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_role(
    name: str,
    module: str,
    args: Sequence[str],
    run_dir: Path,
    env: dict[str, str],
    prefix: Sequence[str] = (),
) -> RoleProcess:
    log_path = run_dir / "logs" / f"{name}.log"
    cmd = [*prefix, sys.executable, "-m", module, *args]
    with open(log_path, "ab") as fh:
        popen = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    log.info("started %s (pid %d): %s", name, popen.pid, " ".join(cmd))
    return RoleProcess(name=name, cmd=cmd, log_path=log_path, popen=popen)


class RoleFailed(RuntimeError):
    """A role process exited non-zero or never became healthy."""

    def __init__(self, proc: RoleProcess, reason: str) -> None:
        self.proc = proc
        self.reason = reason
        super().__init__(f"{proc.name} (pid {proc.pid}) {reason}")


def wait_until_healthy(
    proc: RoleProcess,
    address: str,
    timeout_s: float,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> None:
    """Poll the standard health service, failing fast if the process dies.

    With a namespace `prefix` the probe runs inside that namespace (the host
    cannot reach namespace addresses), as `python -m fedsllm.wire.probe`.
    """
    from fedsllm.wire.rpc import wait_healthy

    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise RoleFailed(proc, f"exited with code {code} before serving")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RoleFailed(proc, f"not healthy at {address} after {timeout_s:.0f} s")
        if prefix:
            probe = subprocess.run(
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "fedsllm.wire.probe",
                    address,
                    "--timeout",
                    f"{min(2.0, remaining):.2f}",
                ],
                env=env,
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            # A probe that fails at once (not yet in the namespace, an import
            # error) would otherwise be respawned in a tight loop.
            time.sleep(0.1)
            continue
        try:
            wait_healthy(address, timeout_s=min(1.0, remaining))
            return
        except TimeoutError:
            continue


@dataclass(frozen=True)
class Endpoints:
    """Where each role binds, how the others reach it, and how it is started."""

    fed_addr: str
    control_addr: str
    main_addr: str
    """host:port each server binds and the others dial (the same in both modes:
    loopback ports, or addresses inside the run's namespaces)."""
    prefixes: dict[str, list[str]]
    """Command prefix per role name ("fed_server", "main_server", "client_K")."""
    netns_run_id: str = ""

    def prefix(self, role: str) -> list[str]:
        return self.prefixes.get(role, [])


def loopback_endpoints(scenario: ScenarioConfig) -> Endpoints:
    from fedsllm.wire.rpc import free_port

    host = scenario.run.host
    fed, control, main = (f"{host}:{free_port(host)}" for _ in range(3))
    return Endpoints(fed, control, main, prefixes={})


NETNS_PORTS = {"fed": 50051, "main": 50052, "control": 50053}
"""Fixed ports inside the run's namespaces (each namespace has its own port space)."""


def netns_endpoints(scenario: ScenarioConfig, topology: Any) -> Endpoints:
    fed_ip, main_ip = topology.address("fed"), topology.address("main")
    fed = f"{fed_ip}:{NETNS_PORTS['fed']}"
    control = f"{fed_ip}:{NETNS_PORTS['control']}"
    main = f"{main_ip}:{NETNS_PORTS['main']}"
    prefixes = {
        "fed_server": topology.exec_prefix("fed"),
        "main_server": topology.exec_prefix("main"),
    }
    for k in range(scenario.clients.num_clients):
        prefixes[f"client_{k}"] = topology.exec_prefix(k)
    return Endpoints(fed, control, main, prefixes=prefixes, netns_run_id=topology.run_id)


@dataclass
class RunOutcome:
    run_dir: Path
    exit_codes: dict[str, int]
    failed: RoleFailed | None
    wall_s: float


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the roles run.

    The roles run in sessions of their own, so nothing else stops them when
    the launcher is terminated; SIGTERM's default action would skip the
    `finally` that stops them by pid. Only when nobody else handles SIGTERM
    and only from the main thread (signal's rule).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def _raise_exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_processes(
    scenario: ScenarioConfig,
    run_dir: Path,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 0.25,
) -> RunOutcome:
    """Run every role on this machine: on loopback, or in network namespaces
    joined by veth pairs (run.network = netns), which are always removed."""
    with sigterm_as_exit():
        return _run_here(scenario, run_dir, on_tick, tick_s)


def _run_here(
    scenario: ScenarioConfig,
    run_dir: Path,
    on_tick: Callable[[], None] | None,
    tick_s: float,
) -> RunOutcome:
    if scenario.run.network == "netns":
        from fedsllm.link.netns import NetnsTopology

        run_id = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
        topology = NetnsTopology(
            run_id, scenario.clients.num_clients, control_ports=(NETNS_PORTS["control"],)
        )
        with topology:
            return _run_processes(
                scenario, run_dir, netns_endpoints(scenario, topology), on_tick, tick_s
            )
    return _run_processes(scenario, run_dir, loopback_endpoints(scenario), on_tick, tick_s)


def _run_processes(
    scenario: ScenarioConfig,
    run_dir: Path,
    ends: Endpoints,
    on_tick: Callable[[], None] | None,
    tick_s: float,
) -> RunOutcome:
    """Start every role, wait for the clients, stop the servers; never leaves a process."""
    scenario_path = write_scenario(run_dir, scenario)
    env = role_env(scenario)
    common = ["--scenario-json", str(scenario_path), "--run-dir", str(run_dir)]
    if ends.netns_run_id:
        common += ["--netns-run-id", ends.netns_run_id]
    timeout_s = scenario.run.startup_timeout_s
    procs: list[RoleProcess] = []
    exit_codes: dict[str, int] = {}
    failed: RoleFailed | None = None
    t0 = time.monotonic()
    try:
        fed = start_role(
            "fed_server",
            "fed_server",
            [*common, "--bind", ends.fed_addr, "--control-bind", ends.control_addr],
            run_dir,
            env,
            ends.prefix("fed_server"),
        )
        procs.append(fed)
        main = start_role(
            "main_server",
            "main_server",
            [*common, "--bind", ends.main_addr, "--fed-address", ends.fed_addr],
            run_dir,
            env,
            ends.prefix("main_server"),
        )
        procs.append(main)
        wait_until_healthy(fed, ends.fed_addr, timeout_s, ends.prefix("fed_server"), env)
        wait_until_healthy(main, ends.main_addr, timeout_s, ends.prefix("main_server"), env)
        clients = [
            start_role(
                f"client_{k}",
                "client",
                [
                    *common,
                    "--client-id",
                    str(k),
                    "--fed-address",
                    ends.fed_addr,
                    "--control-address",
                    ends.control_addr,
                    "--main-address",
                    ends.main_addr,
                ],
                run_dir,
                env,
                ends.prefix(f"client_{k}"),
            )
            for k in range(scenario.clients.num_clients)
        ]
        procs.extend(clients)
        pending = {c.name: c for c in clients}
        while pending:
            for name, proc in list(pending.items()):
                code = proc.poll()
                if code is None:
                    continue
                exit_codes[name] = code
                del pending[name]
                if code != 0:
                    raise RoleFailed(proc, f"exited with code {code}")
            for server in (fed, main):
                code = server.poll()
                if code is not None:
                    raise RoleFailed(server, f"exited with code {code} while clients ran")
            if on_tick is not None:
                on_tick()
            time.sleep(tick_s)
    except RoleFailed as err:
        failed = err
    finally:
        # Clients first (they may still be talking to the servers), then every
        # process is signalled before any is waited for, so an interrupt during
        # one wait cannot leave the others running.
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            code = proc.stop()
            exit_codes.setdefault(proc.name, code)
    if on_tick is not None:
        on_tick()
    if failed is None:
        for proc in procs[:2]:
            if exit_codes.get(proc.name, 0) != 0:
                failed = RoleFailed(proc, f"exited with code {exit_codes[proc.name]} at shutdown")
    return RunOutcome(
        run_dir=run_dir, exit_codes=exit_codes, failed=failed, wall_s=time.monotonic() - t0
    )
