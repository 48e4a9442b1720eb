"""The local launcher: the fed server, the main server and K clients as separate
OS processes on loopback, watched until they finish.

It owns process lifecycle only: run directory, ports, command lines, health
waits, failure detection, and stopping every process it started by its own
pid. Training logic lives in the roles; the summary is computed from the
trace files the roles write (fedsllm.summary).
"""

from __future__ import annotations

import contextlib
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


def fresh_out_dir(out: str | Path | None, stem: str, field: str = "--out") -> Path:
    """OUT itself when given (absent or an empty directory), else runs/<stem>-<timestamp>;
    created, checked writable (fedsllm.paths), and returned absolute. Runs never write
    into a used directory."""
    from fedsllm.paths import writable_dir

    if out:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            from fedsllm.errors import ConfigError

            raise ConfigError(field, str(path), "exists and is not an empty directory")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stem}-{stamp}"
        suffix = 1
        while path.exists():
            path = Path("runs") / f"{stem}-{stamp}-{suffix}"
            suffix += 1
    return writable_dir(path, field)


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

    def signal(self, signum: int) -> None:
        """Send `signum` to the role's process group, while the role is still ours.

        Roles run in sessions of their own (their pgid is their pid), so the
        group also reaches anything a role started. A process that has been
        reaped is never signalled: its pid may belong to someone else by now.
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait(self) -> int:
        return int(self.popen.wait())


class StopRequest:
    """SIGINT and SIGTERM received while roles run, recorded instead of raised.

    A KeyboardInterrupt raised at an arbitrary point (between a fork and the
    line that records the child, say) is how children were orphaned: the
    launcher now turns both signals into this flag, checks it between every
    step of start-up and while it waits, and stops everything it started
    before it re-raises (`raise_if_set`).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals: list[int] = []

    def record(self, signum: int, _frame: FrameType | None = None) -> None:
        self.signals.append(signum)
        self.event.set()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    @property
    def hurry(self) -> bool:
        """A second signal: the user wants out now, so cleanup skips the grace period."""
        return len(self.signals) >= 2

    def check(self) -> None:
        if self.is_set:
            raise RunInterrupted(self.signals[0])

    def raise_if_set(self) -> None:
        """After cleanup: SIGINT becomes KeyboardInterrupt, SIGTERM SystemExit(143)."""
        if not self.signals:
            return
        if self.signals[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + self.signals[0])


class RunInterrupted(Exception):
    """Start-up or the wait for the clients was cut short by a signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class ProcessSet:
    """Every role process of a run, recorded the moment it exists.

    `start` appends the child before it returns, and no signal can raise in
    between (StopRequest), so `stop_all` always reaches every child, at any
    point of start-up.
    """

    def __init__(self, stop: StopRequest | None = None) -> None:
        self.procs: list[RoleProcess | ForkedRole] = []
        self.stop = stop or StopRequest()

    def start(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        run_dir: Path,
        env: dict[str, str],
        prefix: Sequence[str] = (),
    ) -> RoleProcess:
        self.stop.check()
        proc = start_role(name, module, args, run_dir, env, prefix)
        self.procs.append(proc)
        return proc

    def start_forked(self, host: ClientHost, name: str) -> ForkedRole:
        """A client forked by `host` (already in this set; see ClientHost.request),
        recorded once the host reports its pid. Until then it is in the host's
        process group, which stopping the host reaches."""
        self.stop.check()
        proc = host.forked(name)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace_s: float = 10.0, poll_s: float = 0.05) -> dict[str, int]:
        """SIGTERM to every process at once (the newest first: clients before the
        servers they talk to), one shared grace period, then SIGKILL to the rest.

        A second interrupt while waiting skips what is left of the grace period.
        Returns every process's exit code.
        """
        for proc in reversed(self.procs):
            proc.terminate()
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() >= deadline or self.stop.hurry:
                break
            time.sleep(poll_s)
        for proc in self.procs:
            if proc.poll() is None:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", proc.name, proc.pid)
                proc.kill()
        return {proc.name: proc.wait() for proc in self.procs}


ROLE_ENV_VARS = (
    "FEDSLLM_SCENARIO",
    "FEDSLLM_RUN_DIR",
    "FEDSLLM_WORK_DIR",
    "FEDSLLM_CLIENT_ID",
    "FEDSLLM_FED_ADDRESS",
    "FEDSLLM_CONTROL_ADDRESS",
    "FEDSLLM_MAIN_ADDRESS",
    "FEDSLLM_FED_BIND",
    "FEDSLLM_CONTROL_BIND",
    "FEDSLLM_MAIN_BIND",
)
"""Variables that configure one role on its own host (README: Running across
machines); the launcher passes every value as a flag and drops these."""


def role_work_dir(run_dir: Path, name: str) -> Path:
    """The private directory of role `name` ("main_server", "client_K") in a run
    the launcher starts: its telemetry spool and fetched base, nothing shared."""
    return run_dir / "roles" / name


def role_env(scenario: ScenarioConfig) -> dict[str, str]:
    from fedsllm.security.run_secrets import SECURITY_ENV_VARS

    # Credentials too: a role gets the launcher's (run_secrets), never the shell's.
    env = {
        k: v for k, v in os.environ.items() if k not in ROLE_ENV_VARS and k not in SECURITY_ENV_VARS
    }
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


class ClientHost:
    """The client fork server (`python -m client.host`) and what it reports.

    Clients of a loopback run are forked from one process that imported
    torch, transformers and peft once (client/host.py says why). The host is
    a RoleProcess of its own (its own session, stopped through its pid; the
    clients share its process group, so that signal reaches them too); each
    client is a `ForkedRole` whose exit code the host, its parent, reports.
    """

    def __init__(self, proc: RoleProcess) -> None:
        self.proc = proc
        self._cond = threading.Condition()
        self._ready = False
        self._pids: dict[str, int] = {}
        self._codes: dict[str, int] = {}
        self._eof = False
        self._reader = threading.Thread(target=self._read, name="client-host", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, run_dir: Path, env: dict[str, str], prefix: Sequence[str] = ()) -> ClientHost:
        log_path = run_dir / "logs" / "client_host.log"
        cmd = [*prefix, sys.executable, "-m", "client.host"]
        # Each client runs a dozen threads (gRPC, telemetry, pacing); glibc's
        # default of 8 malloc arenas per core lets every one keep its own heap.
        env = {"MALLOC_ARENA_MAX": "2", **env}
        with open(log_path, "ab") as fh:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fh,
                env=env,
                start_new_session=True,
            )
        log.info("started client_host (pid %d): %s", popen.pid, " ".join(cmd))
        return cls(RoleProcess(name="client_host", cmd=cmd, log_path=log_path, popen=popen))

    def _read(self) -> None:
        stdout = self.proc.popen.stdout
        if stdout is None:  # pragma: no cover - always a pipe
            return
        for line in stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                kind = event.get("event")
                if kind == "ready":
                    self._ready = True
                elif kind == "started":
                    self._pids[event["name"]] = int(event["pid"])
                elif kind == "exited":
                    self._codes[event["name"]] = int(event["code"])
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _send(self, **request: Any) -> None:
        stdin = self.proc.popen.stdin
        if stdin is None:  # pragma: no cover - always a pipe
            return
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            stdin.write((json.dumps(request) + "\n").encode())
            stdin.flush()

    def wait_ready(self, timeout_s: float, stop: StopRequest | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._ready:
                if self._eof or self.proc.poll() is not None:
                    raise RoleFailed(self.proc, "exited before it was ready")
                if stop is not None:
                    stop.check()
                if time.monotonic() >= deadline:
                    raise RoleFailed(self.proc, f"not ready after {timeout_s:.0f} s")
                self._cond.wait(0.1)

    def request(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Ask for client `name` with `args` (`env` set in the child over the host's),
        without waiting: requests sent back to back are forked back to back, where a
        round trip each would queue behind the clients already computing."""
        self.request_many([(name, args, env)])

    def request_many(
        self, clients: Sequence[tuple[str, Sequence[str], dict[str, str] | None]]
    ) -> None:
        """`request` for many clients in one write: the host forks them all before
        any of them starts (client/host.py)."""
        lines = []
        for name, args, env in clients:
            log_path = self.proc.log_path.parent / f"{name}.log"
            request = {"op": "start", "name": name, "argv": list(args), "env": env or {}}
            lines.append(json.dumps({**request, "log": str(log_path)}))
        stdin = self.proc.popen.stdin
        if stdin is None:  # pragma: no cover - always a pipe
            return
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            stdin.write(("\n".join(lines) + "\n").encode())
            stdin.flush()

    def forked(self, name: str, timeout_s: float = 30.0) -> ForkedRole:
        """The child the host forked for `name` (requested before)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while name not in self._pids:
                if self._eof or time.monotonic() >= deadline:
                    raise RoleFailed(self.proc, f"did not fork {name}")
                self._cond.wait(0.1)
            pid = self._pids[name]
        log.info("started %s (pid %d, forked by client_host)", name, pid)
        return ForkedRole(
            name=name,
            log_path=self.proc.log_path.parent / f"{name}.log",
            host=self,
            forked_pid=pid,
        )

    def code(self, name: str) -> int | None:
        """`name`'s exit code once the host reported it; -9 if the host is gone
        without reporting (it died, and its children with its process group)."""
        with self._cond:
            if name in self._codes:
                return self._codes[name]
            if self._eof and self.proc.poll() is not None:
                return -signal.SIGKILL
            return None

    def wait_code(self, name: str) -> int:
        with self._cond:
            while True:
                code = self.code(name)
                if code is not None:
                    return code
                self._cond.wait(0.1)

    def signal(self, name: str, signum: int) -> None:
        self._send(op="signal", name=name, signum=signum)


@dataclass
class ForkedRole:
    """A client forked by the ClientHost; the same surface as RoleProcess. Signals go
    through the host, its parent, which forwards them only to a child it has not
    reaped, so they never reach a reused pid."""

    name: str
    log_path: Path
    host: ClientHost
    forked_pid: int

    @property
    def pid(self) -> int:
        return self.forked_pid

    def poll(self) -> int | None:
        return self.host.code(self.name)

    def wait(self) -> int:
        return self.host.wait_code(self.name)

    def log_tail(self, num_lines: int = 25) -> str:
        return RoleProcess.log_tail(self, num_lines)  # type: ignore[arg-type]

    def signal(self, signum: int) -> None:
        if self.poll() is None:
            self.host.signal(self.name, signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


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
    stop: StopRequest | None = None,
    security: Any = None,
) -> None:
    """Poll the standard health service, failing fast if the process dies
    or the launcher is interrupted (`stop`), over a channel with the
    launcher's credentials `security` (fedsllm.wire.rpc.Security).

    With a namespace `prefix` the probe runs inside that namespace (the host
    cannot reach namespace addresses), as `python -m fedsllm.wire.probe`.
    """
    from fedsllm.wire.rpc import wait_healthy

    deadline = time.monotonic() + timeout_s
    while True:
        if stop is not None:
            stop.check()
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
            wait_healthy(address, timeout_s=min(1.0, remaining), security=security)
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
def deferred_stop_signals() -> Iterator[StopRequest]:
    """Record SIGINT and SIGTERM in a StopRequest while the roles run.

    The roles run in sessions of their own, so neither the terminal's Ctrl-C
    nor a SIGTERM to the launcher reaches them: only the launcher's cleanup
    does, and it must never be skipped or cut short by an exception raised
    mid-statement. Handlers can be set only from the main thread (signal's
    rule); elsewhere the request stays empty and the caller's handlers apply.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop.record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_processes(
    scenario: ScenarioConfig,
    run_dir: Path,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 0.25,
) -> RunOutcome:
    """Run every role on this machine: on loopback, or in network namespaces
    joined by veth pairs (run.network = netns), which are always removed.

    An interrupt (SIGINT, SIGTERM) stops every process started so far, at any
    point, and is then re-raised: KeyboardInterrupt, or SystemExit(143).
    """
    with deferred_stop_signals() as stop:
        try:
            outcome = _run_here(scenario, run_dir, on_tick, tick_s, stop)
        except RunInterrupted:
            outcome = None
    stop.raise_if_set()
    if outcome is None:  # pragma: no cover - RunInterrupted is raised only with a signal
        raise RuntimeError("run interrupted without a signal")
    return outcome


def netns_run_id(run_dir: Path) -> str:
    """The id that names a run's namespaces (fsl-<id>-<role>): short, and stable for
    one run directory, so tests and cleanup can find exactly this run's names."""
    return hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]


def _run_here(
    scenario: ScenarioConfig,
    run_dir: Path,
    on_tick: Callable[[], None] | None,
    tick_s: float,
    stop: StopRequest,
) -> RunOutcome:
    if scenario.run.network == "netns":
        from fedsllm.link.netns import NetnsTopology

        run_id = netns_run_id(run_dir)
        topology = NetnsTopology(
            run_id, scenario.clients.num_clients, control_ports=(NETNS_PORTS["control"],)
        )
        with topology:
            return _run_processes(
                scenario, run_dir, netns_endpoints(scenario, topology), on_tick, tick_s, stop
            )
    return _run_processes(scenario, run_dir, loopback_endpoints(scenario), on_tick, tick_s, stop)


def run_secrets(scenario: ScenarioConfig, run_dir: Path, ends: Endpoints) -> Any:
    """Every role's credentials for this run (fedsllm.security.run_secrets): a
    token each, and with run.tls a certificate each from a per-run CA naming
    the run's addresses. In network namespaces the addresses are private to
    this host, so plain gRPC there counts as asked for (said in the log)."""
    from fedsllm.security.credentials import is_loopback
    from fedsllm.security.run_secrets import prepare_run_secrets

    names = ["fed_server", "main_server"] + [
        f"client_{k}" for k in range(scenario.clients.num_clients)
    ]
    addresses = (ends.fed_addr, ends.control_addr, ends.main_addr)
    hosts = sorted({a.rpartition(":")[0] for a in addresses if not is_loopback(a)})
    insecure = scenario.run.insecure
    if hosts and not scenario.run.tls and not insecure and scenario.run.network == "netns":
        log.info("plain gRPC between this run's private network namespaces (%s)", hosts)
        insecure = True
    if not scenario.run.tls:
        from fedsllm.security.credentials import check_insecure

        for address in addresses:  # refused before any role starts (ConfigError)
            warning = check_insecure(address, insecure)
            if warning is not None and scenario.run.insecure:
                log.warning("%s", warning)
    secrets = prepare_run_secrets(
        run_dir,
        names,
        {name: role_work_dir(run_dir, name) for name in names},
        num_clients=scenario.clients.num_clients,
        tls=scenario.run.tls,
        insecure=insecure,
        extra_ip_addresses=[h for h in hosts if _is_ip(h)],
    )
    log.info("%s", secrets.describe())
    (run_dir / "security.txt").write_text(secrets.describe() + "\n")
    return secrets


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _run_processes(
    scenario: ScenarioConfig,
    run_dir: Path,
    ends: Endpoints,
    on_tick: Callable[[], None] | None,
    tick_s: float,
    stop: StopRequest,
) -> RunOutcome:
    """Start every role, wait for the clients, stop the servers; never leaves a process.

    Only the fed server is given the scenario and RUN_DIR; every other role gets
    the fed server's address and a private work directory of its own
    (RUN_DIR/roles/<role>/, which no other role reads), and everything else
    over gRPC.
    """
    scenario_path = write_scenario(run_dir, scenario)
    env = role_env(scenario)
    common = ["--netns-run-id", ends.netns_run_id] if ends.netns_run_id else []
    secrets = run_secrets(scenario, run_dir, ends)
    security = secrets.launcher_security()  # the launcher's own, for its health waits

    def env_of(name: str) -> dict[str, str]:
        """The shared environment plus role `name`'s own credentials (files only)."""
        return {**env, **secrets.role_env(name)}

    def work_dir(name: str) -> list[str]:
        path = role_work_dir(run_dir, name)
        path.mkdir(parents=True, exist_ok=True)
        return ["--work-dir", str(path)]

    timeout_s = scenario.run.startup_timeout_s
    roles = ProcessSet(stop)
    exit_codes: dict[str, int] = {}
    failed: RoleFailed | None = None
    t0 = time.monotonic()
    try:
        fed = roles.start(
            "fed_server",
            "fed_server",
            [
                *common,
                *("--scenario", str(scenario_path), "--run-dir", str(run_dir)),
                *("--bind", ends.fed_addr, "--control-bind", ends.control_addr),
            ],
            run_dir,
            env_of("fed_server"),
            ends.prefix("fed_server"),
        )
        main = roles.start(
            "main_server",
            "main_server",
            [
                *common,
                *work_dir("main_server"),
                *("--bind", ends.main_addr, "--fed-address", ends.fed_addr),
            ],
            run_dir,
            env_of("main_server"),
            ends.prefix("main_server"),
        )
        host = None
        if not ends.prefix("client_0"):
            # Loopback: clients fork from one pre-imported host (client/host.py),
            # which imports while the servers start. In namespaces each client
            # needs its own `ip netns exec`, so each is started on its own.
            host = ClientHost.start(run_dir, env)
            roles.procs.append(host.proc)
        probe_env = {**env, **secrets.launcher_env()}
        wait_until_healthy(
            fed, ends.fed_addr, timeout_s, ends.prefix("fed_server"), probe_env, stop, security
        )
        wait_until_healthy(
            main, ends.main_addr, timeout_s, ends.prefix("main_server"), probe_env, stop, security
        )
        if host is not None:
            host.wait_ready(timeout_s, stop)
        pending: dict[str, RoleProcess | ForkedRole] = {}
        forked: list[tuple[str, Sequence[str], dict[str, str] | None]] = []
        for k in range(scenario.clients.num_clients):
            client_args = [
                    *common,
                    *work_dir(f"client_{k}"),
                    "--client-id",
                    str(k),
                    "--fed-address",
                    ends.fed_addr,
                    "--control-address",
                    ends.control_addr,
                    "--main-address",
                    ends.main_addr,
            ]  # fmt: skip
            if host is not None:
                # Only this client's own variables travel: the rest is the host's env.
                forked.append((f"client_{k}", client_args, secrets.role_env(f"client_{k}")))
                continue
            client = roles.start(
                f"client_{k}", "client", client_args, run_dir,
                env_of(f"client_{k}"), ends.prefix(f"client_{k}"),
            )  # fmt: skip
            pending[client.name] = client
        if host is not None and forked:
            host.request_many(forked)
        for name, _, _ in forked:
            pending[name] = roles.start_forked(host, name)  # type: ignore[arg-type]
        while pending:
            stop.check()
            for name, proc in list(pending.items()):
                code = proc.poll()
                if code is None:
                    continue
                exit_codes[name] = code
                del pending[name]
                if code != 0:
                    raise RoleFailed(proc, f"exited with code {code}")
            for server in (fed, main, *((host.proc,) if host is not None else ())):
                code = server.poll()
                if code is not None:
                    raise RoleFailed(server, f"exited with code {code} while clients ran")
            if on_tick is not None:
                on_tick()
            stop.event.wait(tick_s)
    except RoleFailed as err:
        failed = err
    finally:
        # Every process is signalled before any is waited for, so an interrupt
        # during the wait cannot leave the others running.
        for name, code in roles.stop_all().items():
            exit_codes.setdefault(name, code)
    if on_tick is not None:
        on_tick()
    if failed is None:
        for proc in roles.procs[:2]:
            if exit_codes.get(proc.name, 0) != 0:
                failed = RoleFailed(proc, f"exited with code {exit_codes[proc.name]} at shutdown")
    return RunOutcome(
        run_dir=run_dir, exit_codes=exit_codes, failed=failed, wall_s=time.monotonic() - t0
    )
