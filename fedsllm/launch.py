"""The local launcher: the fed server, the main server and K clients as separate
OS processes on loopback, watched until they finish.

It owns process lifecycle only: run directory, ports, command lines, health
waits, failure detection, and stopping every process it started by its own
pid. Training logic lives in the roles; the summary is computed from the
trace files the roles write (fedsllm.summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
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


LAUNCHER_ONLY_FIELDS = ("restart", "max_restarts", "restart_backoff_s", "faults")
"""Fields of run.* that only the launcher reads: how it supervises a run, not what
the roles compute. They are left out of the scenario hash, so a run resumed with
other --restart or --faults is still the same run to its roles and their stores."""


def scenario_hash(scenario: ScenarioConfig) -> str:
    """Short stable hash of the resolved scenario; roles refuse peers with another."""
    doc = scenario.to_dict()
    doc["run"] = {k: v for k, v in doc["run"].items() if k not in LAUNCHER_ONLY_FIELDS}
    text = json.dumps(doc, sort_keys=True, default=str)
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


LOCK_FILE = "launcher.lock"
"""RUN_DIR/launcher.lock: flock'd by the launcher that runs RUN_DIR, for the
whole run; it holds that launcher's pid while it runs, and nothing after a
clean exit (a launcher killed with SIGKILL leaves its pid: the lock itself
is the kernel's, and free)."""


@contextmanager
def run_dir_lock(
    run_dir: Path, flag: str, before_claim: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold RUN_DIR/launcher.lock (fcntl.flock, exclusive) while the body runs:
    a second launcher on the same run (`--resume RUN_DIR` while it is still
    live) would start a second set of roles on the same stores. Refused with a
    ConfigError naming `flag` (exit 2) and the holder's pid when known. The
    kernel drops the lock when its holder exits, however it exits, and the
    roles do not inherit it (the descriptor is not inheritable).

    `before_claim` runs once the lock is held and before the file is written
    (its pid): read-only checks of the run (`check_resume`) that nobody else
    can change meanwhile. Whatever it raises goes on up with the lock file
    as it was (not even its mtime changed); with no lock file at all it runs
    before the file is created, so a refused run directory gains nothing."""
    import fcntl

    from fedsllm.errors import ConfigError

    path = Path(run_dir) / LOCK_FILE
    if before_claim is not None and not path.exists():
        before_claim()  # no launcher ever held this directory: none holds it now
        before_claim = None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f"launcher (pid {holder})" if holder.isdigit() else "launcher"
            raise ConfigError(
                flag, str(run_dir), f"run directory in use by another {who}"
            ) from None
        if before_claim is not None:
            before_claim()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:  # a finished launcher's pid would name a process that is gone, or another
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


class RunAlreadyComplete(Exception):
    """`check_resume`'s answer for a run with nothing left to resume: its fed
    server's store has every planned round aggregated and the last global
    adapter committed. Not an error: `fedsllm run --resume` says so, exit 0."""

    def __init__(self, run_dir: Path, rounds_closed: int, num_rounds: int) -> None:
        super().__init__(
            f"{run_dir}: the run is already complete ({rounds_closed} of {num_rounds} rounds); "
            f"nothing to resume — see `fedsllm report {run_dir}`"
        )


def check_resume(run_dir: Path, scenario: ScenarioConfig) -> None:
    """Before a resume writes, locks or starts anything: read every store its
    roles would resume from, each through its own loader (fedsllm.state.check),
    writing nothing. The fed server's RUN_DIR/state first: RunAlreadyComplete
    when it holds every planned round (no role would have work); then the main
    server's and each client's roles/<role>/state. A store that cannot be read
    is a ConfigError naming the file and what is wrong with it."""
    from fedsllm.state.check import check_checkpoint_store, stored_progress

    num_clients = scenario.clients.num_clients
    progress = stored_progress(run_dir / "state", num_clients)
    if progress is not None and progress.complete:
        raise RunAlreadyComplete(run_dir, progress.rounds_closed, progress.num_rounds)
    check_checkpoint_store("main_server", role_work_dir(run_dir, "main_server") / "state")
    for k in range(num_clients):
        check_checkpoint_store("client", role_work_dir(run_dir, f"client_{k}") / "state")


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
    terminated: bool = False
    """The launcher sent it SIGTERM while it ran (terminate): a death by SIGTERM
    is then the launcher's own stop, not a failure (stopped_cleanly)."""

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
        """Ask the process to stop (SIGTERM) without waiting. SIGCONT follows: a
        role a stop fault left stopped acts on a handled SIGTERM only once
        continued, and would otherwise wait out the grace and be SIGKILLed."""
        if self.popen.poll() is None:
            self.terminated = True
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait(self) -> int:
        return int(self.popen.wait())


def stopped_cleanly(proc: Any, code: int | None) -> bool:
    """Whether exit `code` of role `proc` at shutdown is a clean stop: 0, or death
    by the SIGTERM the launcher itself sent it (`terminated`): a server restarted
    near the end can get that SIGTERM before it has installed its handlers."""
    if code == 0:
        return True
    return code == -signal.SIGTERM and bool(getattr(proc, "terminated", False))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a run cleanly: Ctrl-C, a SIGTERM, and SIGHUP (the terminal closed,
or `kill -HUP`), which used to kill the launcher before it recorded anything."""


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP received while roles run, recorded instead of raised.

    A KeyboardInterrupt raised at an arbitrary point (between a fork and the
    line that records the child, say) is how children were orphaned: the
    launcher now turns these signals into this flag, checks it between every
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
        """A second signal: the user wants out now, so cleanup skips the grace period.
        A repeated SIGHUP is not one: a closing terminal's shell resends its SIGHUP
        to the job, and the kernel sends one more as the shell exits."""
        return any(signum != signal.SIGHUP for signum in self.signals[1:])

    def check(self) -> None:
        if self.is_set:
            raise RunInterrupted(self.signals[0])

    def raise_if_set(self) -> None:
        """After cleanup: SIGINT becomes KeyboardInterrupt, any other signal N
        SystemExit(128 + N): 143 for SIGTERM, 129 for SIGHUP."""
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


def parent_death_prefix(signame: str = "KILL") -> list[str]:
    """`setpriv --pdeathsig SIG --` when util-linux's setpriv is installed, else nothing.

    A role runs in a session of its own, so a launcher killed with SIGKILL (which
    no cleanup survives) would leave it running. setpriv sets PR_SET_PDEATHSIG and
    execs the role, so the kernel sends SIG to the role when the launcher dies;
    it is kept across exec (`ip netns exec` too) and is chosen over a preexec_fn,
    which is unsafe in a launcher that runs threads. The signal comes when the
    launcher thread that started the role ends: every start, restarts included,
    happens on the thread that runs the whole run. State is not at risk: every
    role commits its store atomically. Forked clients never exec, so they set
    the same signal themselves (die_with_parent).
    """
    tool = shutil.which("setpriv")
    return [tool, "--pdeathsig", signame, "--"] if tool else []


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when its parent dies."""


def die_with_parent(signum: int, parent_pid: int) -> bool:
    """In a forked child that does not exec (a client of client/host.py): what
    parent_death_prefix gets from setpriv, set with prctl(PR_SET_PDEATHSIG)
    through ctypes, so the kernel sends `signum` when the parent dies, however
    it dies (a SIGKILL to the client host alone does not reach its clients).

    Returns False when the parent is already gone, since the signal comes only
    for a death after it was set: the child's parent is then no longer
    `parent_pid`, and the caller exits at once. Where prctl cannot be called
    (not Linux) the child is stopped as before, by the host when it goes.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    return os.getppid() == parent_pid


def start_role(
    name: str,
    module: str,
    args: Sequence[str],
    run_dir: Path,
    env: dict[str, str],
    prefix: Sequence[str] = (),
) -> RoleProcess:
    log_path = run_dir / "logs" / f"{name}.log"
    cmd = [*parent_death_prefix(), *prefix, sys.executable, "-m", module, *args]
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
    Forks are known by the host's fork sequence number, never by pid: a pid
    the kernel hands out again must not give a new client an old one's exit
    code (the supervisor would restart a client that is still running).

    A host can die before it reports its clients' exits (a SIGKILL to its pid
    alone leaves its process group running). Its clients then stop on their
    parent-death SIGTERM (client/host.py), and the launcher holds a pidfd for
    each fork (taken when the host reports it started), which names that exact
    process whatever pid the kernel hands out later: through it the launcher
    sees when the client is gone and signals one still running itself
    (ForkedRole.signal). Their exit codes are then unknown (EXIT_UNKNOWN).
    """

    def __init__(self, proc: RoleProcess) -> None:
        self.proc = proc
        self._cond = threading.Condition()
        self._ready = False
        self._forks: dict[str, list[tuple[int, int]]] = {}
        """(fork seq, pid) of every child forked for a name, in order (a restarted
        client has several)."""
        self._claimed: set[int] = set()
        """Fork seqs already handed out as a ForkedRole."""
        self._codes: dict[int, int] = {}
        """Exit code per fork seq, as the host reported it."""
        self._pidfds: dict[int, int] = {}
        """A pidfd per fork seq not yet reported exited (none where pidfds are missing)."""
        self._lost: dict[int, int] = {}
        """Per fork seq gone after its host without a report: EXIT_UNKNOWN, or -SIGKILL
        when the launcher's own SIGKILL ended it."""
        self._killed: set[int] = set()
        """Fork seqs the launcher sent SIGKILL through their pidfd, while they ran."""
        self._eof = False
        self._reader = threading.Thread(target=self._read, name="client-host", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, run_dir: Path, env: dict[str, str], prefix: Sequence[str] = ()) -> ClientHost:
        log_path = run_dir / "logs" / "client_host.log"
        # SIGTERM, not SIGKILL: the host then stops the clients it forked (a killed
        # host would leave them behind).
        cmd = [*parent_death_prefix("TERM"), *prefix, sys.executable, "-m", "client.host"]
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
                    fork = (int(event["seq"]), int(event["pid"]))
                    self._forks.setdefault(event["name"], []).append(fork)
                    pidfd = self._pidfd_of(fork[1])
                    if pidfd is not None:
                        self._pidfds[fork[0]] = pidfd
                elif kind == "exited":
                    self._codes[int(event["seq"])] = int(event["code"])
                    self._close_pidfd(int(event["seq"]))
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

    def _unclaimed(self, name: str) -> tuple[int, int] | None:
        forks = self._forks.get(name, [])
        return next((f for f in forks if f[0] not in self._claimed), None)

    def forked(self, name: str, timeout_s: float = 30.0) -> ForkedRole:
        """The child the host forked for `name` (requested before): the first one not
        handed out yet, so a client requested again gets its new process."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (fork := self._unclaimed(name)) is None:
                if self._eof or time.monotonic() >= deadline:
                    raise RoleFailed(self.proc, f"did not fork {name}")
                self._cond.wait(0.1)
            seq, pid = fork
            self._claimed.add(seq)
        log.info("started %s (pid %d, fork %d of client_host)", name, pid, seq)
        return ForkedRole(
            name=name,
            log_path=self.proc.log_path.parent / f"{name}.log",
            host=self,
            forked_pid=pid,
            fork_seq=seq,
        )

    def _pidfd_of(self, pid: int) -> int | None:
        """A pidfd for the process the host reported forking as `pid`, or None: where
        pidfds are missing (ENOSYS, EPERM: parent-death signals alone stop the
        clients then), or when `pid` is no longer the host's (reaped, and the pid
        reused; or a stand-in host's made-up pid). A process in the host's session
        is one: the host leads it, and the kernel hands out no pid still naming a
        session; the check counts only if that process still runs after it."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return None
        try:
            ours = os.getsid(pid) == self.proc.pid
        except OSError:
            ours = False
        if ours and not pidfd_exited(pidfd):
            return pidfd
        os.close(pidfd)
        return None

    def _close_pidfd(self, seq: int) -> None:
        pidfd = self._pidfds.pop(seq, None)
        if pidfd is not None:
            os.close(pidfd)

    def _host_gone(self) -> bool:
        """The host has exited and everything it reported has been read."""
        return self._eof and self.proc.poll() is not None

    def code(self, seq: int) -> int | None:
        """The exit code of fork `seq` once the host reported it; None while it runs.

        A fork the host never reported (it died first) runs until its pidfd says it
        exited; its code is then EXIT_UNKNOWN, or -SIGKILL if the launcher's own
        SIGKILL ended it. Without a pidfd it counts as gone with the host: its
        parent-death signal stops it, and nothing here can watch it."""
        with self._cond:
            if seq in self._codes:
                return self._codes[seq]
            if not self._host_gone():
                return None
            if seq in self._lost:
                return self._lost[seq]
            pidfd = self._pidfds.get(seq)
            if pidfd is not None and not pidfd_exited(pidfd):
                return None
            self._close_pidfd(seq)
            self._lost[seq] = -signal.SIGKILL if seq in self._killed else EXIT_UNKNOWN
            return self._lost[seq]

    def wait_code(self, seq: int) -> int:
        with self._cond:
            while True:
                code = self.code(seq)
                if code is not None:
                    return code
                self._cond.wait(0.1)

    def signal(self, name: str, seq: int, signum: int) -> None:
        """Send `signum` to fork `seq` of client `name`: through the host, which signals
        only a child it has not reaped; once the host has exited, through the fork's
        pidfd (the kernel refuses it for a process that has exited)."""
        if self.proc.poll() is None:
            self._send(op="signal", name=name, signum=signum)
            return
        with self._cond:
            pidfd = self._pidfds.get(seq)
            if pidfd is None or pidfd_exited(pidfd):
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signum)
                if signum == signal.SIGKILL:
                    self._killed.add(seq)


EXIT_UNKNOWN = -(1 << 16)
"""ForkedRole.poll() and wait() of a client gone without its exit code: its host died
before reporting it. No exit code is this (they are 0 to 255, or minus a signal
number); the run records it as null, with the reason (RunOutcome.exit_unknown)."""


def pidfd_exited(pidfd: int, timeout_s: float = 0.0) -> bool:
    """Whether the process `pidfd` names has exited, waiting up to `timeout_s` for it
    (0: a look, no wait): its pidfd reads as ready then."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


@dataclass
class ForkedRole:
    """A client forked by the ClientHost; the same surface as RoleProcess. Signals go
    through the host, its parent, which forwards them only to a child it has not
    reaped, so they never reach a reused pid; once the host is gone, through the
    fork's pidfd (ClientHost.signal)."""

    name: str
    log_path: Path
    host: ClientHost
    forked_pid: int
    fork_seq: int
    """The host's number for this fork: what its exit code is reported under."""
    terminated: bool = False
    """The launcher sent it SIGTERM while it ran (see RoleProcess.terminated)."""

    @property
    def pid(self) -> int:
        return self.forked_pid

    def poll(self) -> int | None:
        return self.host.code(self.fork_seq)

    def wait(self) -> int:
        return self.host.wait_code(self.fork_seq)

    def log_tail(self, num_lines: int = 25) -> str:
        return RoleProcess.log_tail(self, num_lines)  # type: ignore[arg-type]

    def signal(self, signum: int) -> None:
        if self.poll() is None:
            self.host.signal(self.name, self.fork_seq, signum)

    def terminate(self) -> None:
        """SIGTERM, then SIGCONT for a client a stop fault left stopped."""
        if self.poll() is None:
            self.terminated = True
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)

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


def check_launch(scenario: ScenarioConfig) -> None:
    """ConfigError (exit 2) for what would otherwise fail only after the roles
    started: what the allocation controller refuses (check_plannable), and a
    run.host the launcher cannot serve on (check_run_host). Launchers call it
    before a run directory exists, so a refusal leaves nothing behind."""
    from fedsllm.delay.policies import check_plannable

    check_plannable(scenario)
    check_run_host(scenario)


def check_run_host(scenario: ScenarioConfig) -> None:
    """run.host must take plain gRPC (loopback, --insecure, or TLS: the rule of
    fedsllm.security.credentials.check_insecure) and be an address this host
    can listen on. In network namespaces the launcher picks the addresses."""
    from fedsllm.errors import ConfigError
    from fedsllm.security.credentials import check_insecure
    from fedsllm.wire.rpc import free_port

    if scenario.run.network == "netns":
        return
    host = scenario.run.host
    if not scenario.run.tls:
        try:
            check_insecure(f"{host}:0", scenario.run.insecure)  # the warning is logged at launch
        except ConfigError as err:
            raise ConfigError("run.host", host, err.reason) from None
    try:
        free_port(host)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError("run.host", host, f"cannot listen on it here ({reason})") from None


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


@dataclass(frozen=True)
class RestartPolicy:
    """How the launcher treats a role that dies while clients still run (run.restart)."""

    restart: str = "never"
    """never: the death stops the run; on-failure: the role is started again."""
    max_restarts: int = 3
    """Restarts per role the policy allows (those a fault asks for are not counted)."""
    backoff_s: float = 1.0
    """Wait before a role's first restart; doubled per further restart, at most 10x."""

    @classmethod
    def of(cls, scenario: ScenarioConfig) -> RestartPolicy:
        run = scenario.run
        return cls(run.restart, run.max_restarts, run.restart_backoff_s)

    def delay_s(self, num_restarts: int) -> float:
        """Wait before restart number `num_restarts` + 1 of one role."""
        return min(self.backoff_s * 2.0**num_restarts, 10.0 * self.backoff_s)


@dataclass(frozen=True)
class RestartRecord:
    """One role started again during a run: who, why, when."""

    role: str
    exit_code: int | None
    """The old process's exit code as subprocess gives it (negative: killed by that
    signal); None when it was still running and the restart stopped it."""
    at_s: float
    """When the new process started, seconds since the launcher started the run."""
    round: int | None
    """The round the fed server had open then, when known."""
    cause: str
    """"supervisor" (run.restart = on-failure) or "fault" (the fault spec asked)."""
    attempt: int
    """This role's restarts so far, this one included."""
    pid: int = 0
    """The new process's pid."""

    @property
    def died_of(self) -> str:
        """ "exit 1", "SIGKILL", or "running" (stopped by the restart itself)."""
        if self.exit_code is None:
            return "running"
        if self.exit_code == EXIT_UNKNOWN:
            return "unknown"
        if self.exit_code < 0:
            with contextlib.suppress(ValueError):
                return signal.Signals(-self.exit_code).name
        return f"exit {self.exit_code}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "died_of": self.died_of}


class Supervisor:
    """Which role process is current, which clients are done, what restarts are due.

    The watch loop calls `tick()` every tick: a client that exited 0 is done; any
    other death (a client's non-zero exit or signal, a server's exit of any kind
    while clients run) either waits for the restart a fault has scheduled
    (`FaultExecutor.restart_pending`), or is started again after a backoff under
    run.restart = on-failure (at most `max_restarts` times per role), or stops the
    run (RoleFailed), as before. `start(name)` starts role `name` again with the
    arguments it had; it is the launcher's (a ProcessSet start, so the new child is
    tracked from birth). Processes only need `name`, `pid`, `poll()` and `kill()`
    (and `signal()` for `send_signal`), so the logic is tested with fakes.
    """

    def __init__(
        self,
        start: Callable[[str], Any],
        policy: RestartPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        round_of: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.start = start
        self.policy = policy
        self.clock = clock
        self.t0 = clock()
        self.round_of = round_of
        self.fault_restart_pending: Callable[[str], bool] = lambda _name: False
        """Set by the launcher when faults run: whether a fault will restart `name`."""
        self.current: dict[str, Any] = {}
        self.clients: set[str] = set()
        self.done: set[str] = set()
        self.due: dict[str, float] = {}
        """Role -> clock time of its scheduled (on-failure) restart."""
        self.waiting_for_fault: set[str] = set()
        self.deaths: dict[str, int] = {}
        """Role -> exit code of its last death not yet followed by a restart."""
        self.counts: dict[str, int] = {}
        """Role -> restarts by the supervisor (the ones max_restarts limits)."""
        self.restarts: list[RestartRecord] = []

    def watch(self, name: str, proc: Any, client: bool = False) -> None:
        self.current[name] = proc
        if client:
            self.clients.add(name)

    @property
    def clients_running(self) -> bool:
        return bool(self.clients - self.done)

    def pid_of(self, name: str) -> int | None:
        """The pid of `name`'s current process while it runs (FaultOps.pid_of)."""
        proc = self.current.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def send_signal(self, pid: int, signum: int) -> None:
        """FaultOps.send_signal: only to a current process of this run, through its
        own handle (a forked client through its host), never to a bare pid."""
        for proc in self.current.values():
            if proc.pid == pid and proc.poll() is None:
                proc.signal(signum)
                return
        raise ProcessLookupError(f"pid {pid} is not a running role of this run")

    def elapsed_s(self) -> float:
        return self.clock() - self.t0

    def tick(self) -> None:
        """Notice deaths, start the restarts that are due; RoleFailed when the run stops."""
        now = self.clock()
        for name, proc in list(self.current.items()):
            if name in self.done or name in self.due or name in self.waiting_for_fault:
                continue
            code = proc.poll()
            if code is not None:
                self._died(name, proc, code, now)
        for name, at in sorted(self.due.items(), key=lambda item: item[1]):
            if now >= at:
                del self.due[name]
                self._start_again(name, "supervisor")

    def _died(self, name: str, proc: Any, code: int, now: float) -> None:
        if name in self.clients and code == 0:
            self.done.add(name)
            return
        self.deaths[name] = code
        how = f"exited with code {code}" + ("" if name in self.clients else " while clients ran")
        if self.fault_restart_pending(name):
            log.warning("%s (pid %d) %s; a fault restarts it", name, proc.pid, how)
            self.waiting_for_fault.add(name)
            return
        used = self.counts.get(name, 0)
        if self.policy.restart == "on-failure":
            if used < self.policy.max_restarts:
                delay = self.policy.delay_s(used)
                log.warning("%s (pid %d) %s; restarting it in %.1f s", name, proc.pid, how, delay)
                self.due[name] = now + delay
                return
            how += f" (after {used} restarts, run.max_restarts={self.policy.max_restarts})"
        raise RoleFailed(proc, how)

    def restart(self, name: str) -> None:
        """Start `name` again now, as a fault asks (FaultOps.restart): a process still
        running is killed first, and waited for."""
        if name not in self.current:
            raise KeyError(f"{name} is not a role of this run")
        if name in self.done:
            raise RuntimeError(f"{name} has finished; nothing to restart")
        old = self.current[name]
        if old.poll() is None and name not in self.due and name not in self.waiting_for_fault:
            old.kill()
            old.wait()
            self.deaths.pop(name, None)
        elif old.poll() is not None and name not in self.deaths:
            self.deaths[name] = int(old.poll())
        self.due.pop(name, None)
        self._start_again(name, "fault")

    def _start_again(self, name: str, cause: str) -> None:
        self.waiting_for_fault.discard(name)
        code = self.deaths.pop(name, None)
        proc = self.start(name)
        self.current[name] = proc
        if cause == "supervisor":
            self.counts[name] = self.counts.get(name, 0) + 1
        record = RestartRecord(
            role=name,
            exit_code=code,
            at_s=round(self.elapsed_s(), 3),
            round=self.round_of(),
            cause=cause,
            attempt=sum(1 for r in self.restarts if r.role == name) + 1,
            pid=proc.pid,
        )
        self.restarts.append(record)
        log.warning("restarted %s (pid %d, %s, after %s)", name, proc.pid, cause, record.died_of)


class RoundTracker:
    """The round the fed server has open, followed from the run's telemetry.

    It reads the fed server's local socket (RUN_DIR/telemetry.sock), which the
    launcher reaches on loopback and with network namespaces alike, through the
    watcher that follows the collector across fed server restarts. Round r is
    open once a client trained in it or round r-1 was aggregated; None before.
    """

    def __init__(self, run_dir: Path) -> None:
        from fedsllm.security.run_secrets import read_launcher_security
        from fedsllm.telemetry import socket_address
        from fedsllm.telemetry.service import TelemetryWatcher

        self.watcher = TelemetryWatcher(
            socket_address(run_dir), security=read_launcher_security(run_dir)
        )
        self.open_round: int | None = None
        self.rounds_done: set[int] = set()

    def current(self) -> int | None:
        from fedsllm.telemetry.records import EventKind

        for rec in self.watcher.poll():
            if rec.event is EventKind.ROUND_DONE:
                self.rounds_done.add(rec.round)
                seen = rec.round + 1
            elif rec.event is EventKind.TRAIN_LOSS and rec.round >= 0:
                seen = rec.round
            else:
                continue
            self.open_round = seen if self.open_round is None else max(self.open_round, seen)
        return self.open_round

    def close(self) -> None:
        self.watcher.close()


def outage_cmds(topology: Any, name: str, down: bool) -> list[list[str]]:
    """Cut (down) or restore role `name`'s link under run.network = netns: its port on
    the run's bridge (p-<role>), so the role's own eth0 and address stay as they are."""
    from fedsllm.link.netns import BRIDGE_ROLE, client_role

    servers = {"fed_server": "fed", "main_server": "main"}
    role = servers.get(name) or client_role(int(name.removeprefix("client_")))
    port = f"p-{role}"
    state = "down" if down else "up"
    return [["ip", "-n", topology.netns(BRIDGE_ROLE), "link", "set", port, state]]


@dataclass
class RunOutcome:
    run_dir: Path
    exit_codes: dict[str, int | None]
    """Each process's exit code as subprocess gives it; None when it is not known
    (a client whose host died first: why, in `exit_unknown`)."""
    failed: RoleFailed | None
    wall_s: float
    restarts: list[RestartRecord] = dataclasses.field(default_factory=list)
    """Every role started again during the run, in order."""
    fault_events: list[Any] = dataclasses.field(default_factory=list)
    """Every fault action performed (fedsllm.faults.FaultEvent), in order."""
    faults: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """FaultExecutor.summary(): per fault, when it fired and each action's outcome."""
    resumed: bool = False
    """Whether this launch continued an interrupted run (fedsllm run --resume)."""
    rounds_done: int | None = None
    """Rounds the fed server aggregated, as the launcher saw them (None: not followed)."""
    interrupted: str = ""
    """Why the launch was cut short ("interrupted by SIGTERM"); empty when it was not."""
    stop_signal: int | None = None
    """The first stop signal (STOP_SIGNALS) the launcher got while the roles ran, also
    when it came only as the run ended (then `interrupted` is empty); None: none came."""
    output_dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    """The launcher's standard streams found gone while it ran ("stderr" -> why, e.g. its
    pipe's reader exited), whose later output was dropped (fedsllm.output)."""
    exit_unknown: dict[str, str] = dataclasses.field(default_factory=dict)
    """Process -> why its exit code is null in `exit_codes`."""


@contextmanager
def deferred_stop_signals() -> Iterator[StopRequest]:
    """Record SIGINT, SIGTERM and SIGHUP (STOP_SIGNALS) in a StopRequest while the
    roles run.

    The roles run in sessions of their own, so neither the terminal's Ctrl-C
    or hang-up nor a signal to the launcher reaches them: only the launcher's
    cleanup does, and it must never be skipped or cut short by an exception
    raised mid-statement. A SIGHUP the launcher was started with ignored stays
    ignored (`nohup fedsllm run` outlives its terminal); SIGINT and SIGTERM
    always stop it, even in a script's background job, which starts with SIGINT
    ignored but may still be stopped by `kill -INT PID`. Handlers can be set
    only from the main thread (signal's rule); elsewhere the request stays
    empty and the caller's handlers apply.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {
        sig: signal.signal(sig, stop.record)
        for sig in STOP_SIGNALS
        if not (sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN)
    }
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
    resume: bool = False,
    *,
    raise_interrupt: bool = True,
    output_dropped: dict[str, str] | None = None,
) -> RunOutcome:
    """Run every role on this machine: on loopback, or in network namespaces
    joined by veth pairs (run.network = netns), which are always removed.

    With `resume` the run directory is an interrupted run's: every role starts
    on the same directories and credentials and restores from its store.
    Roles that die are restarted under run.restart = on-failure, and the
    faults of run.faults are injected (both recorded in RUN_DIR/faults.json).
    An interrupt (SIGINT, SIGTERM, SIGHUP) stops every process started so far, at
    any point, and is recorded in faults.json ("interrupted by SIGHUP"); it is
    then re-raised (StopRequest.raise_if_set: KeyboardInterrupt, or
    SystemExit(128 + N)), or with `raise_interrupt=False` the outcome is
    returned with `stop_signal` (and `interrupted`) set, for the caller to
    finish its own records first (fedsllm run writes summary.json, then exits
    128 + N). Any other exception that ends the launch is recorded there too
    before it goes on up. `output_dropped` is the caller's live record of its
    lost output streams (fedsllm.output.LauncherOutput), copied into the outcome.
    """
    with deferred_stop_signals() as stop:
        # _run_processes turns a RunInterrupted into an outcome with `interrupted` set.
        outcome = _run_here(scenario, run_dir, on_tick, tick_s, stop, resume, output_dropped)
    if stop.signals:
        outcome.stop_signal = stop.signals[0]
        if raise_interrupt:
            stop.raise_if_set()
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
    resume: bool = False,
    output_dropped: dict[str, str] | None = None,
) -> RunOutcome:
    if scenario.run.network == "netns":
        from fedsllm.link.netns import NetnsTopology

        run_id = netns_run_id(run_dir)
        topology = NetnsTopology(
            run_id, scenario.clients.num_clients, control_ports=(NETNS_PORTS["control"],)
        )
        with topology:
            ends = netns_endpoints(scenario, topology)
            return _run_processes(
                scenario, run_dir, ends, on_tick, tick_s, stop, resume, topology, output_dropped
            )
    ends = loopback_endpoints(scenario)
    return _run_processes(
        scenario, run_dir, ends, on_tick, tick_s, stop, resume, output_dropped=output_dropped
    )


def run_secrets(
    scenario: ScenarioConfig, run_dir: Path, ends: Endpoints, resume: bool = False
) -> Any:
    """Every role's credentials for this run (fedsllm.security.run_secrets): a
    token each, and with run.tls a certificate each from a per-run CA naming
    the run's addresses. In network namespaces the addresses are private to
    this host, so plain gRPC there counts as asked for (said in the log).
    A resumed run reuses the credentials it has (`existing_run_secrets`)."""
    from fedsllm.security.credentials import is_loopback
    from fedsllm.security.run_secrets import existing_run_secrets, prepare_run_secrets

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
    role_dirs = {name: role_work_dir(run_dir, name) for name in names}
    secrets = existing_run_secrets(run_dir, role_dirs, insecure) if resume else None
    if secrets is None:
        secrets = prepare_run_secrets(
            run_dir,
            names,
            role_dirs,
            num_clients=scenario.clients.num_clients,
            tls=scenario.run.tls,
            insecure=insecure,
            extra_ip_addresses=[h for h in hosts if _is_ip(h)],
        )
    log.info("%s", secrets.describe())
    (run_dir / "security.txt").write_text(secrets.describe() + "\n")
    return secrets


FAULTS_FILE = "faults.json"
"""RUN_DIR/faults.json: one entry per launch of the run (first, and each --resume):
its restart policy, faults and their actions, restarts, and how it ended."""


def read_fault_log(run_dir: Path) -> list[dict[str, Any]]:
    """The launches recorded in RUN_DIR/faults.json ([] when there is none)."""
    try:
        doc = json.loads((Path(run_dir) / FAULTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    launches = doc.get("launches") if isinstance(doc, dict) else None
    return list(launches) if isinstance(launches, list) else []


LAUNCH_UNRECORDED = "the launcher ended without recording how (killed, or its host went down)"
"""What faults.json says of a launch that never wrote its outcome."""


def open_fault_log(run_dir: Path, scenario: ScenarioConfig, resumed: bool) -> str:
    """Record in RUN_DIR/faults.json that a launch began, as not completed and
    ended without a record, and return its id. write_fault_log replaces the
    entry with the outcome; a launcher that is SIGKILLed never gets there, and
    the entry then still says so (a later --resume lists it)."""
    launch_id = f"{os.getpid()}-{time.time_ns()}"
    entry = {
        "launch": launch_id,
        "resumed": resumed,
        "restart": scenario.run.restart,
        "max_restarts": scenario.run.max_restarts,
        "fault_spec": scenario.run.faults,
        "faults": [],
        "events": [],
        "restarts": [],
        "completed": False,
        "failed": LAUNCH_UNRECORDED,
        "rounds_done": None,
        "wall_s": None,
        "output_dropped": {},
    }
    _save_launch(run_dir, entry)
    return launch_id


def _save_launch(run_dir: Path, entry: dict[str, Any]) -> Path:
    """Put `entry` in RUN_DIR/faults.json in place of the entry of the same
    launch id, or after the others (written whole, atomically)."""
    from fedsllm.state.format import atomic_write

    launches = read_fault_log(run_dir)
    same = [
        i
        for i, e in enumerate(launches)
        if entry.get("launch") and e.get("launch") == entry["launch"]
    ]
    if same:
        launches[same[0]] = entry
    else:
        launches.append(entry)
    path = Path(run_dir) / FAULTS_FILE
    atomic_write(path, (json.dumps({"launches": launches}, indent=2) + "\n").encode())
    return path


def write_fault_log(
    run_dir: Path, scenario: ScenarioConfig, outcome: RunOutcome, launch_id: str = ""
) -> Path:
    """Record this launch's outcome in RUN_DIR/faults.json: in place of the
    entry open_fault_log wrote for `launch_id`, or appended."""
    failed = outcome.failed
    entry = {
        "launch": launch_id,
        "resumed": outcome.resumed,
        "restart": scenario.run.restart,
        "max_restarts": scenario.run.max_restarts,
        "fault_spec": scenario.run.faults,
        "faults": outcome.faults,
        "events": [e.to_dict() for e in outcome.fault_events],
        "restarts": [r.to_dict() for r in outcome.restarts],
        "completed": failed is None and not outcome.interrupted,
        "failed": outcome.interrupted
        or (None if failed is None else f"{failed.proc.name}: {failed.reason}"),
        "rounds_done": outcome.rounds_done,
        "wall_s": round(outcome.wall_s, 3),
        "output_dropped": dict(outcome.output_dropped),
    }
    return _save_launch(run_dir, entry)


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
    resume: bool = False,
    topology: Any = None,
    output_dropped: dict[str, str] | None = None,
) -> RunOutcome:
    """Start every role, watch them until the clients are done, stop the servers;
    never leaves a process, and records how the launch ended in faults.json
    whatever ended it: the clients done, a role failed, an interrupt (returned
    with `interrupted` set), or an exception in the launcher itself (recorded,
    then raised).

    Only the fed server is given the scenario and RUN_DIR; every other role gets
    the fed server's address and a private work directory of its own
    (RUN_DIR/roles/<role>/, which no other role reads), and everything else
    over gRPC. Each role is started from one recipe (`start`), so a restart
    (run.restart, or a fault) starts it exactly as the first time.
    """
    scenario_path = write_scenario(run_dir, scenario)
    env = role_env(scenario)
    common = ["--netns-run-id", ends.netns_run_id] if ends.netns_run_id else []
    secrets = run_secrets(scenario, run_dir, ends, resume)
    security = secrets.launcher_security()  # the launcher's own, for its health waits
    num_clients = scenario.clients.num_clients
    faults = _faults_of(scenario)

    def env_of(name: str) -> dict[str, str]:
        """The shared environment plus role `name`'s own credentials (files only)."""
        return {**env, **secrets.role_env(name)}

    def work_dir(name: str) -> list[str]:
        path = role_work_dir(run_dir, name)
        path.mkdir(parents=True, exist_ok=True)
        return ["--work-dir", str(path)]

    server_args = {
        "fed_server": [
            *common,
            *("--scenario", str(scenario_path), "--run-dir", str(run_dir)),
            *("--bind", ends.fed_addr, "--control-bind", ends.control_addr),
        ],
        "main_server": [
            *common,
            *work_dir("main_server"),
            *("--bind", ends.main_addr, "--fed-address", ends.fed_addr),
        ],
    }
    client_args = {
        f"client_{k}": [
            *common,
            *work_dir(f"client_{k}"),
            *("--client-id", str(k), "--fed-address", ends.fed_addr),
            *("--control-address", ends.control_addr, "--main-address", ends.main_addr),
        ]
        for k in range(num_clients)
    }
    timeout_s = scenario.run.startup_timeout_s
    roles = ProcessSet(stop)
    host: ClientHost | None = None

    def start(name: str) -> RoleProcess | ForkedRole:
        """Start role `name` (again) with its arguments; tracked from birth."""
        if name in server_args:
            return roles.start(
                name, name, server_args[name], run_dir, env_of(name), ends.prefix(name)
            )
        if host is not None:
            # Only this client's own variables travel: the rest is the host's env.
            host.request(name, client_args[name], secrets.role_env(name))
            return roles.start_forked(host, name)
        return roles.start(
            name, "client", client_args[name], run_dir, env_of(name), ends.prefix(name)
        )

    tracker: RoundTracker | None = None
    executor: Any = None
    exit_codes: dict[str, int | None] = {}
    exit_unknown: dict[str, str] = {}
    failed: RoleFailed | None = None
    interrupted = ""  # why the launch was cut short: an interrupt, or a launcher error
    supervisor = Supervisor(start, RestartPolicy.of(scenario))

    def outcome_of(failed: RoleFailed | None) -> RunOutcome:
        outcome = _outcome(run_dir, exit_codes, failed, supervisor, executor, tracker, resume)
        outcome.interrupted = interrupted
        outcome.output_dropped = dict(output_dropped or {})
        outcome.exit_unknown = dict(exit_unknown)
        return outcome

    if resume:
        log.info("resuming the run in %s from its roles' stores", run_dir)
    launch_id = open_fault_log(run_dir, scenario, resume)  # the outcome replaces it
    try:
        fed = start("fed_server")
        supervisor.watch("fed_server", fed)
        main = start("main_server")
        supervisor.watch("main_server", main)
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
            # One write for every client: the host forks them all before any starts.
            host.request_many(
                [(name, args, secrets.role_env(name)) for name, args in client_args.items()]
            )
            for name in client_args:
                supervisor.watch(name, roles.start_forked(host, name), client=True)
        else:
            for name in client_args:
                supervisor.watch(name, start(name), client=True)
        if faults or scenario.run.restart != "never":
            tracker = RoundTracker(run_dir)
            supervisor.round_of = tracker.current
        if faults:
            executor = _fault_executor(faults, supervisor, topology)
            supervisor.fault_restart_pending = executor.restart_pending
        while supervisor.clients_running:
            stop.check()
            if executor is not None and not executor.done:
                executor.poll(supervisor.elapsed_s(), supervisor.round_of())
            # The host first: its clients' deaths after its own are not theirs to report.
            if host is not None and host.proc.poll() is not None:
                raise RoleFailed(
                    host.proc, f"exited with code {host.proc.poll()} while clients ran"
                )
            supervisor.tick()
            if on_tick is not None:
                on_tick()
            stop.event.wait(tick_s)
    except RoleFailed as err:
        failed = err
    except RunInterrupted as err:
        interrupted = str(err)
    except BaseException as err:
        # Anything else (a bug, an exit from a display whose output is gone)
        # still stops every role below, and is recorded before it goes on up:
        # a launch must not end as "ended without recording how".
        interrupted = launcher_error(err)
        log.error("%s; stopping every role", interrupted)
        raise
    finally:
        # Every process is signalled before any is waited for, so an interrupt
        # during the wait cannot leave the others running.
        codes = roles.stop_all()
        for name in supervisor.done:
            exit_codes[name] = 0
        for name, code in codes.items():
            if code == EXIT_UNKNOWN and name not in exit_codes:
                code = None
                exit_unknown[name] = "client_host exited before reporting how it ended"
            exit_codes.setdefault(name, code)
        if tracker is not None:
            tracker.current()
            tracker.close()
        if interrupted:  # recorded too, so a later --resume lists this launch
            cut_short = outcome_of(None)
            write_fault_log(run_dir, scenario, cut_short, launch_id)
    if interrupted:  # by a signal: the caller says so and exits (run_processes)
        return cut_short
    if failed is None:
        for name in ("fed_server", "main_server"):
            proc = supervisor.current.get(name)
            code = proc.poll() if proc is not None else None
            if proc is not None and code is not None and not stopped_cleanly(proc, code):
                failed = RoleFailed(proc, f"exited with code {code} at shutdown")
                break
    try:
        if on_tick is not None:
            on_tick()  # the last records; recorded below even if this fails
    finally:
        outcome = outcome_of(failed)
        write_fault_log(run_dir, scenario, outcome, launch_id)
    return outcome


def launcher_error(err: BaseException) -> str:
    """How faults.json words a launch ended by an exception in the launcher itself."""
    detail = str(err)
    return f"the launcher stopped on {type(err).__name__}" + (f": {detail}" if detail else "")


def _outcome(
    run_dir: Path,
    exit_codes: dict[str, int | None],
    failed: RoleFailed | None,
    supervisor: Supervisor,
    executor: Any,
    tracker: RoundTracker | None,
    resume: bool,
) -> RunOutcome:
    return RunOutcome(
        run_dir=run_dir,
        exit_codes=exit_codes,
        failed=failed,
        wall_s=supervisor.elapsed_s(),
        restarts=list(supervisor.restarts),
        fault_events=list(executor.events) if executor is not None else [],
        faults=executor.summary() if executor is not None else [],
        resumed=resume,
        rounds_done=len(tracker.rounds_done) if tracker is not None else None,
    )


def _faults_of(scenario: ScenarioConfig) -> list[Any]:
    from fedsllm.config import check_faults

    return check_faults(
        scenario.run.faults, scenario.clients.num_clients, scenario.run.network, "run.faults"
    )


def _fault_executor(faults: Sequence[Any], supervisor: Supervisor, topology: Any) -> Any:
    """A FaultExecutor over the processes `supervisor` holds, and the run's links."""
    from fedsllm.faults import FaultExecutor, FaultOps

    def set_outage(name: str, down: bool) -> None:
        if topology is None:  # refused when the scenario loads; kept as a clear error
            raise RuntimeError("a link outage needs run.network = netns")
        for cmd in outage_cmds(topology, name, down):
            subprocess.run(cmd, check=True, capture_output=True)

    ops = FaultOps(
        pid_of=supervisor.pid_of,
        restart=supervisor.restart,
        set_outage=set_outage,
        send_signal=supervisor.send_signal,
    )
    return FaultExecutor(faults, ops)
