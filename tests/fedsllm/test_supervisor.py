"""The launcher's supervisor (fedsllm.launch.Supervisor): which deaths stop a run,
which are restarted, when, how often, and what is recorded. Fake processes and a
fake clock: no process, no sleep. The real-process checks are at the end."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fedsllm.config import load_scenario
from fedsllm.faults import FaultExecutor, FaultOps, parse_faults
from fedsllm.launch import (
    ProcessSet,
    RestartPolicy,
    RoleFailed,
    Supervisor,
    role_env,
)
from tests.fedsllm.test_launch import ECHO_HOST

SLEEPER = "tests.fedsllm.launch_sleeper"


class FakeProc:
    """A role process: running until `code` is set; records signals and kills."""

    next_pid = 1000

    def __init__(self, name: str) -> None:
        FakeProc.next_pid += 1
        self.name = name
        self.pid = FakeProc.next_pid
        self.code: int | None = None
        self.signals: list[int] = []
        self.log_path = Path("/nonexistent")

    def poll(self) -> int | None:
        return self.code

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.code = -signal.SIGKILL

    def wait(self) -> int:
        assert self.code is not None
        return self.code

    def signal(self, signum: int) -> None:
        self.signals.append(signum)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _supervisor(policy: RestartPolicy, clients: int = 2) -> tuple[Supervisor, Clock, list[str]]:
    clock = Clock()
    started: list[str] = []

    def start(name: str) -> FakeProc:
        started.append(name)
        return FakeProc(name)

    sup = Supervisor(start, policy, clock=clock, round_of=lambda: 4)
    for name in ("fed_server", "main_server"):
        sup.watch(name, FakeProc(name))
    for k in range(clients):
        sup.watch(f"client_{k}", FakeProc(f"client_{k}"), client=True)
    return sup, clock, started


ON_FAILURE = RestartPolicy("on-failure", max_restarts=2, backoff_s=1.0)


def test_a_client_that_exits_0_is_done_and_never_restarted() -> None:
    sup, clock, started = _supervisor(ON_FAILURE)
    sup.current["client_0"].code = 0
    sup.tick()
    clock.now += 60
    sup.tick()
    assert started == [] and sup.done == {"client_0"}
    assert sup.clients_running
    sup.current["client_1"].code = 0
    sup.tick()
    assert not sup.clients_running


@pytest.mark.parametrize("name", ["client_1", "main_server", "fed_server"])
def test_restart_never_stops_the_run_at_the_first_death(name: str) -> None:
    sup, _, started = _supervisor(RestartPolicy("never"))
    sup.current[name].code = -signal.SIGKILL
    with pytest.raises(RoleFailed) as err:
        sup.tick()
    assert err.value.proc.name == name and "-9" in err.value.reason
    assert started == []


@pytest.mark.parametrize("name", ["client_1", "main_server", "fed_server"])
def test_on_failure_restarts_any_role_after_its_backoff_and_records_it(name: str) -> None:
    sup, clock, started = _supervisor(ON_FAILURE)
    old = sup.current[name]
    old.code = -signal.SIGKILL
    sup.tick()
    assert started == [], "restarted before its backoff"
    clock.now += 0.5
    sup.tick()
    assert started == []
    clock.now += 0.5
    sup.tick()
    assert started == [name]
    new = sup.current[name]
    assert new is not old and sup.pid_of(name) == new.pid
    (rec,) = sup.restarts
    assert (rec.role, rec.exit_code, rec.died_of, rec.cause, rec.attempt) == (
        name,
        -9,
        "SIGKILL",
        "supervisor",
        1,
    )
    assert rec.round == 4 and rec.pid == new.pid and rec.at_s == 1.0


def test_a_server_that_exits_0_while_clients_run_is_a_death_too() -> None:
    sup, clock, started = _supervisor(ON_FAILURE)
    sup.current["main_server"].code = 0
    sup.tick()
    clock.now += 1
    sup.tick()
    assert started == ["main_server"]
    assert sup.restarts[0].died_of == "exit 0"


def test_backoff_doubles_per_restart_of_a_role_capped_at_ten_times() -> None:
    policy = RestartPolicy("on-failure", max_restarts=10, backoff_s=0.5)
    assert [policy.delay_s(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_on_failure_gives_up_after_max_restarts_naming_the_setting() -> None:
    sup, clock, started = _supervisor(ON_FAILURE)
    for attempt in (1, 2):
        sup.current["client_0"].code = 1
        sup.tick()
        clock.now += 10
        sup.tick()
        assert len(started) == attempt
    sup.current["client_0"].code = 1
    with pytest.raises(RoleFailed) as err:
        sup.tick()
    assert "after 2 restarts, run.max_restarts=2" in err.value.reason
    assert [r.attempt for r in sup.restarts] == [1, 2]


def test_each_role_has_its_own_restart_budget() -> None:
    sup, clock, started = _supervisor(RestartPolicy("on-failure", max_restarts=1, backoff_s=0))
    for name in ("client_0", "client_1", "main_server"):
        sup.current[name].code = 1
    sup.tick()
    assert sorted(started) == ["client_0", "client_1", "main_server"]


def test_a_death_a_fault_will_restart_waits_for_the_fault_not_the_supervisor() -> None:
    sup, clock, started = _supervisor(RestartPolicy("never"))
    sup.fault_restart_pending = lambda name: name == "client_1"
    sup.current["client_1"].code = -signal.SIGKILL
    sup.tick()  # no RoleFailed although the policy is never
    clock.now += 30
    sup.tick()
    assert started == []
    sup.restart("client_1")
    assert started == ["client_1"]
    (rec,) = sup.restarts
    assert (rec.cause, rec.exit_code) == ("fault", -9)
    assert sup.counts == {}, "a fault's restart is not counted against max_restarts"


def test_a_fault_restart_of_a_running_role_kills_it_first() -> None:
    sup, _, started = _supervisor(RestartPolicy("never"))
    old = sup.current["main_server"]
    sup.restart("main_server")
    assert old.signals == [signal.SIGKILL]
    assert started == ["main_server"]
    assert sup.restarts[0].died_of == "running"
    sup.tick()  # the killed old process is no longer watched: no failure


def test_a_fault_restart_replaces_a_scheduled_one() -> None:
    sup, clock, started = _supervisor(ON_FAILURE)
    sup.current["client_0"].code = 1
    sup.tick()
    sup.restart("client_0")
    clock.now += 10
    sup.tick()
    assert started == ["client_0"], "started twice"


def test_a_finished_client_is_not_restarted_by_a_fault() -> None:
    sup, _, started = _supervisor(ON_FAILURE)
    sup.current["client_0"].code = 0
    sup.tick()
    with pytest.raises(RuntimeError, match="has finished"):
        sup.restart("client_0")
    with pytest.raises(KeyError):
        sup.restart("client_9")
    assert started == []


def test_signals_reach_only_a_running_process_of_the_run() -> None:
    sup, _, _ = _supervisor(ON_FAILURE)
    proc = sup.current["client_1"]
    sup.send_signal(proc.pid, signal.SIGSTOP)
    assert proc.signals == [signal.SIGSTOP]
    with pytest.raises(ProcessLookupError):
        sup.send_signal(1, signal.SIGKILL)
    proc.code = -9
    assert sup.pid_of("client_1") is None
    with pytest.raises(ProcessLookupError):
        sup.send_signal(proc.pid, signal.SIGCONT)


def test_fault_restart_pending_follows_the_executors_fired_faults() -> None:
    """A fired kill with restart=D expects the death until its restart is performed,
    the moment of performing it included (the supervisor asks from its own thread)."""
    sup, _, _ = _supervisor(RestartPolicy("never"))
    pending_while_restarting: list[bool] = []

    def restart(name: str) -> None:
        pending_while_restarting.append(executor.restart_pending(name))
        sup.restart(name)

    ops = FaultOps(
        pid_of=sup.pid_of,
        restart=restart,
        set_outage=lambda name, down: None,
        send_signal=sup.send_signal,
    )
    executor = FaultExecutor(parse_faults("kill:client_1@t=1s;restart=2s", 2), ops)
    assert not executor.restart_pending("client_1")
    executor.poll(1.0)
    assert sup.current["client_1"].signals == [signal.SIGKILL]
    assert executor.restart_pending("client_1")
    assert not executor.restart_pending("client_0")
    executor.poll(3.0)
    assert pending_while_restarting == [True]
    assert not executor.restart_pending("client_1")
    assert [e.label for e in executor.events] == ["signal SIGKILL", "restart"]
    assert sup.restarts[0].cause == "fault"


@pytest.mark.slow
def test_a_killed_role_is_started_again_as_a_new_tracked_process(tmp_path) -> None:
    """Real processes: SIGKILL a sleeper; the supervisor starts it again through the
    ProcessSet (tracked from birth), and stop_all stops every process ever started."""
    (tmp_path / "logs").mkdir()
    env = role_env(load_scenario(None))
    roles = ProcessSet()

    def start(name: str):
        return roles.start(name, SLEEPER, [], tmp_path, env)

    sup = Supervisor(start, RestartPolicy("on-failure", max_restarts=1, backoff_s=0.0))
    try:
        sup.watch("client_0", start("client_0"), client=True)
        first = sup.current["client_0"]
        first.kill()
        first.wait()
        sup.tick()
        second = sup.current["client_0"]
        assert second is not first and second.poll() is None
        assert [p.pid for p in roles.procs] == [first.pid, second.pid]
    finally:
        codes = roles.stop_all(grace_s=5.0)
    assert codes == {"client_0": -signal.SIGTERM}
    deadline = time.monotonic() + 10
    while second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.poll() is not None


def test_the_launchers_fault_ops_act_on_the_supervised_processes() -> None:
    """_fault_executor wires FaultOps to the supervisor: a kill reaches the current
    process through its own handle, a restart starts the role through the launcher's
    recipe, and an outage without namespaces is an error recorded, not a crash."""
    from fedsllm.launch import _fault_executor

    sup, _, started = _supervisor(RestartPolicy("never"))
    faults = parse_faults("stop:main_server@t=0s;for=1s, restart:client_0@t=2s;after=1s", 2)
    executor = _fault_executor(faults, sup, topology=None)
    main = sup.current["main_server"]
    executor.poll(0.0, 0)
    assert main.signals == [signal.SIGSTOP]
    executor.poll(1.0, 0)
    assert main.signals == [signal.SIGSTOP, signal.SIGCONT]
    client = sup.current["client_0"]
    executor.poll(2.0, 1)
    assert client.signals == [signal.SIGTERM]
    client.code = -signal.SIGTERM
    executor.poll(3.0, 1)
    assert started == ["client_0"] and sup.current["client_0"] is not client
    assert [e.ok for e in executor.events] == [True] * 4
    outage = _fault_executor(parse_faults("kill:client_1@t=0s", 2), sup, topology=None)
    with pytest.raises(RuntimeError, match="needs run.network = netns"):
        outage.ops.set_outage("client_1", True)


def test_an_outage_cuts_the_roles_port_on_the_runs_bridge() -> None:
    from fedsllm.launch import outage_cmds
    from fedsllm.link.netns import NetnsTopology

    topology = NetnsTopology("abcd1234", 3)
    assert outage_cmds(topology, "client_2", True) == [
        ["ip", "-n", "fsl-abcd1234-br", "link", "set", "p-c2", "down"]
    ]
    assert outage_cmds(topology, "fed_server", False) == [
        ["ip", "-n", "fsl-abcd1234-br", "link", "set", "p-fed", "up"]
    ]
    assert outage_cmds(topology, "main_server", True)[0][-2:] == ["p-main", "down"]


"""A stand-in client host that reports exactly the events the test writes to it."""


def test_a_restarted_client_on_a_reused_pid_is_not_restarted_again(tmp_path) -> None:
    """The restarted client gets its dead predecessor's pid (the kernel reuses
    pids): the supervisor must see it running, not dead with the old exit code,
    and so start nothing more. Forked clients are told apart by fork seq."""
    import json
    import subprocess
    import sys

    from fedsllm.launch import ClientHost, RoleProcess

    popen = subprocess.Popen(
        [sys.executable, "-c", ECHO_HOST], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    host = ClientHost(RoleProcess("client_host", [], tmp_path / "host.log", popen))
    forks: list[int] = []

    def report(**event: object) -> None:
        popen.stdin.write((json.dumps(event) + "\n").encode())
        popen.stdin.flush()

    def start(name: str):
        forks.append(len(forks) + 1)
        report(event="started", name=name, pid=777, seq=forks[-1])  # always pid 777
        return host.forked(name)

    sup = Supervisor(start, RestartPolicy("on-failure", max_restarts=3, backoff_s=0.0))
    try:
        sup.watch("client_0", start("client_0"), client=True)
        first = sup.current["client_0"]
        report(event="exited", name="client_0", pid=777, seq=1, code=1)
        assert first.wait() == 1
        sup.tick()  # the death is seen, and the restart (no backoff) started
        second = sup.current["client_0"]
        assert second is not first and second.pid == first.pid
        sup.tick()
        sup.tick()
        assert forks == [1, 2] and sup.current["client_0"] is second
        assert second.poll() is None and sup.clients_running
    finally:
        popen.stdin.close()
        popen.wait(10)
