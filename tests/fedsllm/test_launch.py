"""The launcher's process lifecycle: children tracked from birth, interrupts that
reach every one of them, and output paths checked before anything runs."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsllm.config import load_scenario
from fedsllm.errors import ConfigError
from fedsllm.launch import (
    ClientHost,
    ForkedRole,
    ProcessSet,
    RunInterrupted,
    StopRequest,
    deferred_stop_signals,
    fresh_out_dir,
    pidfd_exited,
    role_env,
)
from fedsllm.wire.rpc import free_port

SLEEPER = "tests.fedsllm.launch_sleeper"


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
def test_interrupt_between_starts_stops_every_child_started(tmp_path) -> None:
    """SIGINT arriving while children are being started: none is left behind.

    The signal is sent by the test itself after the third start, the point at
    which the old launcher (clients recorded only after all had started) lost
    every client it had already forked.
    """
    (tmp_path / "logs").mkdir()
    env = role_env(load_scenario(None))
    started: list[int] = []
    with deferred_stop_signals() as stop:
        roles = ProcessSet(stop)
        with pytest.raises(RunInterrupted):
            try:
                for k in range(6):
                    started.append(roles.start(f"c{k}", SLEEPER, [], tmp_path, env).pid)
                    if k == 2:
                        os.kill(os.getpid(), signal.SIGINT)
            finally:
                codes = roles.stop_all(grace_s=5.0)
    assert len(started) == 3, "start-up must stop at the first check after the signal"
    assert set(codes) == {"c0", "c1", "c2"}
    assert stop.signals == [signal.SIGINT]
    assert _wait_gone(started) == []
    with pytest.raises(KeyboardInterrupt):
        stop.raise_if_set()


@pytest.mark.slow
def test_stop_all_kills_a_child_that_ignores_sigterm_after_one_shared_grace(tmp_path) -> None:
    (tmp_path / "logs").mkdir()
    env = role_env(load_scenario(None))
    roles = ProcessSet()
    stubborn = [roles.start(f"s{k}", SLEEPER, ["--ignore-term"], tmp_path, env) for k in range(3)]
    for proc in stubborn:  # wait until each has installed its SIG_IGN
        deadline = time.monotonic() + 30
        while "ready" not in proc.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
    codes = roles.stop_all(grace_s=1.0)
    assert codes == {"s0": -signal.SIGKILL, "s1": -signal.SIGKILL, "s2": -signal.SIGKILL}
    assert _wait_gone([p.pid for p in stubborn]) == []


def test_fresh_out_dir_refuses_an_unwritable_path_naming_it(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as err:
        fresh_out_dir(blocker / "run", "stem")
    assert err.value.path == "--out"
    assert str(blocker / "run") in str(err.value)
    assert "cannot write there" in str(err.value)


@contextlib.contextmanager
def _client_host(tmp_path: Path) -> Iterator[tuple[ProcessSet, ClientHost]]:
    """A real client host (the default scenario's role environment), ready, in a
    ProcessSet whose processes are stopped however the test ends."""
    (tmp_path / "logs").mkdir()
    env = role_env(load_scenario(None))
    with deferred_stop_signals() as stop:
        roles = ProcessSet(stop)
        host = ClientHost.start(tmp_path, env)
        roles.procs.append(host.proc)
        try:
            host.wait_ready(120.0, stop)
            yield roles, host
        finally:
            roles.stop_all(grace_s=1.0)  # a test that failed midway: nothing left behind


@pytest.mark.slow
def test_client_host_forks_clients_reports_codes_and_stops_them(tmp_path) -> None:
    """The fork server (issue 12): each client is its own child process with its own
    log; the host reports its exit code; stop_all reaches a client that is still
    waiting (for a fed server that never answers) and leaves no process behind."""
    with _client_host(tmp_path) as (roles, host):
        # No client id: refused as a bad setting (exit 2) before any network.
        host.request("client_bad", ["--fed-address", "127.0.0.1:9"])
        # Waits (up to 120 s) for a fed server on a port nobody serves.
        free = free_port()
        host.request(
            "client_0",
            ["--client-id", "0", "--fed-address", f"127.0.0.1:{free}", "--work-dir",
             str(tmp_path / "w0")],
            {"FEDSLLM_TEST_MARK": "only-client-0"},
        )  # fmt: skip
        bad = roles.start_forked(host, "client_bad")
        waiting = roles.start_forked(host, "client_0")
        assert bad.pid != waiting.pid != host.proc.pid
        deadline = time.monotonic() + 60
        while bad.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bad.poll() == 2
        assert "--client-id" in bad.log_tail()
        assert waiting.poll() is None and _alive(waiting.pid)
        environ = Path(f"/proc/{waiting.pid}/environ").read_bytes()
        assert b"MALLOC_ARENA_MAX=2" in environ
        codes = roles.stop_all(grace_s=5.0)
    assert codes["client_bad"] == 2
    assert codes["client_0"] == -signal.SIGTERM
    assert codes["client_host"] == 0
    assert _wait_gone([bad.pid, waiting.pid, host.proc.pid]) == []


def test_client_host_hands_out_a_restarted_clients_new_process(tmp_path) -> None:
    """A client requested again (a restart) is a new ForkedRole with its own pid, and
    each ForkedRole reads its own exit code: the old one's death does not make the
    new one look dead, nor the new one make the old one look alive. The host is a
    stand-in that prints the events client/host.py would."""
    import json
    import subprocess
    import sys

    from fedsllm.launch import RoleProcess

    events = [
        {"event": "ready"},
        {"event": "started", "name": "client_1", "pid": 111, "seq": 1},
        {"event": "exited", "name": "client_1", "pid": 111, "seq": 1, "code": -9},
        {"event": "started", "name": "client_1", "pid": 222, "seq": 2},
    ]
    script = (
        "import sys\n"
        + "".join(f"print({json.dumps(json.dumps(e))}, flush=True)\n" for e in events)
        + "sys.stdin.read()\n"
    )
    popen = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    host = ClientHost(RoleProcess("client_host", [], tmp_path / "host.log", popen))
    try:
        first = host.forked("client_1")
        second = host.forked("client_1")
        assert (first.pid, second.pid) == (111, 222)
        assert first.poll() == -signal.SIGKILL
        assert second.poll() is None
    finally:
        popen.stdin.close()
        popen.wait(10)


ECHO_HOST = "import sys\nfor line in sys.stdin:\n    print(line, end='', flush=True)\n"
"""A stand-in client host that reports exactly the events the test writes to it."""


def test_a_reused_pid_does_not_give_a_new_client_the_old_ones_exit_code(tmp_path) -> None:
    """The kernel may give a restarted client the pid of the one that died: the
    new client must still read as running (else the supervisor restarts a live
    client), and each handle keeps its own exit code. Forks are told apart by
    the host's fork sequence number."""
    import json
    import subprocess
    import sys

    from fedsllm.launch import RoleProcess

    popen = subprocess.Popen(
        [sys.executable, "-c", ECHO_HOST], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    host = ClientHost(RoleProcess("client_host", [], tmp_path / "host.log", popen))

    def report(**event: object) -> None:
        popen.stdin.write((json.dumps(event) + "\n").encode())
        popen.stdin.flush()

    try:
        report(event="started", name="client_1", pid=4242, seq=1)
        old = host.forked("client_1")
        report(event="exited", name="client_1", pid=4242, seq=1, code=1)
        assert old.wait() == 1
        report(event="started", name="client_1", pid=4242, seq=2)  # the same pid again
        new = host.forked("client_1")
        assert new.pid == old.pid == 4242
        assert new.poll() is None  # running: its predecessor's code is not its own
        report(event="exited", name="client_1", pid=4242, seq=2, code=0)
        assert (new.wait(), old.poll()) == (0, 1)
    finally:
        popen.stdin.close()
        popen.wait(10)


TERM_HANDLER_ROLE = """
import os, signal, sys, time
def stop(signum, frame):
    # A server's handler: it runs only once the process is continued.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(120)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_stop_all_ends_a_stopped_role_by_its_sigterm_not_sigkill(tmp_path) -> None:
    """A server a stop fault left stopped (SIGSTOP) holds a handled SIGTERM until
    it is continued: terminate sends SIGCONT after it, so the role stops by
    its SIGTERM (a clean stop at shutdown), not by SIGKILL at the end of the
    grace period (which the launcher reported as a failed run)."""
    import subprocess
    import sys

    from fedsllm.launch import RoleProcess, stopped_cleanly

    (tmp_path / "logs").mkdir()
    log_path = tmp_path / "logs" / "fed_server.log"
    with open(log_path, "ab") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-c", TERM_HANDLER_ROLE],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = RoleProcess("fed_server", [], log_path, popen)
    roles = ProcessSet()
    roles.procs.append(proc)
    try:
        deadline = time.monotonic() + 30
        while "ready" not in proc.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.signal(signal.SIGSTOP)
        while _state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(proc.pid) == "T"
        # A grace far longer than a continued process needs; SIGKILL only after it.
        codes = roles.stop_all(grace_s=30.0)
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)
    assert codes == {"fed_server": -signal.SIGTERM}
    assert proc.terminated and stopped_cleanly(proc, codes["fed_server"])


def test_only_the_launchers_own_sigterm_is_a_clean_stop_at_shutdown() -> None:
    from fedsllm.launch import stopped_cleanly

    class Proc:
        terminated = False

    ours, theirs = Proc(), Proc()
    ours.terminated = True
    assert stopped_cleanly(ours, 0) and stopped_cleanly(theirs, 0)
    assert stopped_cleanly(ours, -signal.SIGTERM)  # restarted late, no handler yet
    assert not stopped_cleanly(theirs, -signal.SIGTERM)  # someone else's SIGTERM
    assert not stopped_cleanly(ours, -signal.SIGKILL)
    assert not stopped_cleanly(ours, 1)


LAUNCHER_STAND_IN = """
import os, sys, time
from pathlib import Path
from fedsllm.launch import start_role
proc = start_role("role", "tests.fedsllm.launch_sleeper", [], Path(sys.argv[1]), dict(os.environ))
print(proc.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.skipif(not __import__("shutil").which("setpriv"), reason="needs util-linux setpriv")
def test_a_role_dies_with_a_launcher_killed_by_sigkill(tmp_path) -> None:
    """SIGKILL leaves the launcher no cleanup; the kernel then stops its roles
    (PR_SET_PDEATHSIG through setpriv), which run in sessions of their own and
    would otherwise keep running."""
    import subprocess
    import sys

    (tmp_path / "logs").mkdir()
    root = Path(__file__).resolve().parents[2]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_STAND_IN, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert launcher.stdout is not None
    role_pid = int(launcher.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while "ready" not in (tmp_path / "logs" / "role.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        launcher.kill()
        launcher.wait(10)
        assert _wait_gone([role_pid]) == []
    finally:
        if _alive(role_pid):
            os.kill(role_pid, signal.SIGKILL)


def test_a_launch_is_in_faults_json_from_its_start_and_its_outcome_replaces_it(
    tmp_path,
) -> None:
    """A launcher killed by SIGKILL writes nothing at its end: its launch is
    listed anyway, as ended without a record, and a --resume lists it first."""
    from fedsllm.config import ScenarioConfig
    from fedsllm.launch import (
        LAUNCH_UNRECORDED,
        RunOutcome,
        open_fault_log,
        read_fault_log,
        write_fault_log,
    )
    from fedsllm.summary import resilience_lines

    scenario = ScenarioConfig()
    first = open_fault_log(tmp_path, scenario, resumed=False)
    [killed] = read_fault_log(tmp_path)
    assert (killed["launch"], killed["completed"], killed["failed"]) == (
        first,
        False,
        LAUNCH_UNRECORDED,
    )
    second = open_fault_log(tmp_path, scenario, resumed=True)
    assert second != first
    done = RunOutcome(run_dir=tmp_path, exit_codes={}, failed=None, wall_s=2.5, resumed=True)
    write_fault_log(tmp_path, scenario, done, second)
    launches = read_fault_log(tmp_path)
    assert [(e["launch"], e["completed"]) for e in launches] == [(first, False), (second, True)]
    lines = resilience_lines(tmp_path)
    assert lines[0] == f"launch 1 of 2: restart never; failed ({LAUNCH_UNRECORDED})"
    assert lines[1].startswith("resumed 2 of 2: continued from the roles' stores;")
    assert lines[1].endswith("completed")


def test_sighup_is_a_stop_request_like_sigterm() -> None:
    """The terminal closing (SIGHUP) is recorded, not fatal: the launcher stops its
    roles and exits 129 (it used to die on the spot, its launch unrecorded)."""
    missed: list[int] = []  # where a SIGHUP the launcher does not handle lands
    before = signal.signal(signal.SIGHUP, lambda signum, _frame: missed.append(signum))
    try:
        with deferred_stop_signals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            stop.event.wait(2)
        assert signal.getsignal(signal.SIGHUP) is not stop.record  # given back
    finally:
        signal.signal(signal.SIGHUP, before)
    assert missed == []
    assert stop.signals == [signal.SIGHUP]
    assert str(RunInterrupted(signal.SIGHUP)) == "interrupted by SIGHUP"
    with pytest.raises(SystemExit) as exited:
        stop.raise_if_set()
    assert exited.value.code == 128 + signal.SIGHUP


def test_a_stop_signal_ignored_at_start_stays_ignored() -> None:
    """`nohup fedsllm run` starts with SIGHUP ignored so that the run outlives its
    terminal: the launcher must not take that back. A SIGINT ignored at start (a
    script's background job) still stops it: `kill -INT PID` is a request to stop."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_stop_signals() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
            assert signal.getsignal(signal.SIGTERM) == stop.record
            assert signal.getsignal(signal.SIGINT) == stop.record
        assert stop.signals == []
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # given back
    finally:
        signal.signal(signal.SIGHUP, before)
        signal.signal(signal.SIGINT, before_int)


def test_an_interrupted_or_crashed_launch_is_recorded_with_its_dropped_output(tmp_path) -> None:
    """faults.json says what ended a launch (an interrupt, or the launcher's own
    error) and which of its output streams were found gone."""
    from fedsllm.config import ScenarioConfig
    from fedsllm.launch import (
        RunOutcome,
        launcher_error,
        open_fault_log,
        read_fault_log,
        write_fault_log,
    )

    scenario = ScenarioConfig()
    launch = open_fault_log(tmp_path, scenario, resumed=False)
    assert read_fault_log(tmp_path)[0]["output_dropped"] == {}
    outcome = RunOutcome(
        run_dir=tmp_path,
        exit_codes={},
        failed=None,
        wall_s=1.0,
        interrupted="interrupted by SIGHUP",
        output_dropped={"stderr": "broken pipe (its reader exited); later output dropped"},
    )
    write_fault_log(tmp_path, scenario, outcome, launch)
    [entry] = read_fault_log(tmp_path)
    assert (entry["completed"], entry["failed"]) == (False, "interrupted by SIGHUP")
    assert list(entry["output_dropped"]) == ["stderr"]
    assert launcher_error(SystemExit(1)) == "the launcher stopped on SystemExit: 1"
    assert launcher_error(RuntimeError()) == "the launcher stopped on RuntimeError"


def test_a_repeated_sighup_keeps_the_grace_a_second_ctrl_c_skips() -> None:
    """A terminal closing sends SIGHUP twice (its shell resends it, and the kernel
    sends one as the shell exits): the roles still get their grace period."""
    hangups = StopRequest()
    hangups.record(signal.SIGHUP)
    hangups.record(signal.SIGHUP)
    assert not hangups.hurry
    for second in (signal.SIGINT, signal.SIGTERM):
        again = StopRequest()
        again.record(signal.SIGHUP)
        assert not again.hurry
        again.record(second)
        assert again.hurry
    twice = StopRequest()
    twice.record(signal.SIGINT)
    twice.record(signal.SIGINT)
    assert twice.hurry


def _wait_client_running(client: ForkedRole, timeout_s: float = 30.0) -> None:
    """Until forked `client` is past the host's fork gate and runs the client: its
    stdout is its log then (client/host.py _child). A child held at the gate
    still holds the host's pipes and gate, which keeps its siblings there too."""
    log_path = str(client.log_path)
    deadline = time.monotonic() + timeout_s
    while os.readlink(f"/proc/{client.pid}/fd/1") != log_path:
        assert time.monotonic() < deadline, "the client never started"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux 5.3)")
def test_clients_do_not_outlive_a_client_host_killed_by_sigkill(tmp_path) -> None:
    """A SIGKILL to the client host's pid alone (its process group lives on) used to
    orphan its clients, retrying for minutes, while the launcher recorded -9 for
    them. Now a client running freely stops on its parent-death SIGTERM by itself;
    a stopped one (SIGSTOP, as a fault does; its SIGTERM stays pending) is ended by
    stop_all through the pidfd the launcher took when the host forked it; and
    neither gets an exit code nobody reported (EXIT_UNKNOWN, not -9)."""
    from fedsllm import launch

    pidfds: list[int] = []  # the test's own handle on each client, immune to pid reuse
    with _client_host(tmp_path) as (roles, host):
        try:
            free = free_port()  # a fed server nobody serves: the clients wait (120 s)
            host.request_many(
                [
                    (f"client_{k}", ["--client-id", str(k), "--fed-address",
                     f"127.0.0.1:{free}", "--work-dir", str(tmp_path / f"w{k}")], None)
                    for k in range(2)
                ]
            )  # fmt: skip
            free_client, stopped_client = (roles.start_forked(host, f"client_{k}") for k in (0, 1))
            pidfds += [os.pidfd_open(free_client.pid), os.pidfd_open(stopped_client.pid)]
            _wait_client_running(free_client)
            _wait_client_running(stopped_client)
            signal.pidfd_send_signal(pidfds[1], signal.SIGSTOP)
            os.kill(host.proc.pid, signal.SIGKILL)
            assert host.proc.popen.wait(10) == -signal.SIGKILL
            assert pidfd_exited(pidfds[0], 30.0), "a client outlived its host"
            assert not pidfd_exited(pidfds[1], 0.0)  # stopped: left to the launcher
            assert stopped_client.poll() is None, "a client still there reads as running"
            started = time.monotonic()
            codes = roles.stop_all(grace_s=10.0)
            assert pidfd_exited(pidfds[1], 0.0), "stop_all returned before the client exited"
            assert time.monotonic() - started < 15.0
        finally:
            for pidfd in pidfds:  # whatever the launcher left, by the test's own pidfds
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
    assert codes["client_host"] == -signal.SIGKILL
    # Its SIGTERM came from the kernel, not through the host: no one saw how it ended.
    assert codes["client_0"] == launch.EXIT_UNKNOWN
    # Ended by the launcher's SIGTERM and SIGCONT, or by its SIGKILL after the grace.
    assert codes["client_1"] in (launch.EXIT_UNKNOWN, -signal.SIGKILL)
