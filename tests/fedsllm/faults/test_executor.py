from __future__ import annotations

import signal
import threading

from fedsllm.faults.executor import FaultExecutor, FaultOps
from fedsllm.faults.spec import parse_faults


class FakeLauncher:
    """What a launcher hands the executor: its own pids, restart and outage switches."""

    def __init__(self) -> None:
        self.pids = {"client_0": 100, "client_1": 101, "main_server": 200, "fed_server": 300}
        self.log: list[tuple] = []

    def ops(self) -> FaultOps:
        return FaultOps(
            pid_of=self.pids.get,
            restart=lambda name: self.log.append(("restart", name)),
            set_outage=lambda name, on: self.log.append(("outage", name, on)),
            send_signal=self._signal,
        )

    def _signal(self, pid: int, signum: int) -> None:
        self.log.append(("signal", pid, signal.Signals(signum).name))
        if signum == signal.SIGKILL:
            for name in [k for k, v in self.pids.items() if v == pid]:
                del self.pids[name]


def test_timeline_by_time_and_round() -> None:
    launcher = FakeLauncher()
    ex = FaultExecutor(
        parse_faults(
            "kill:client_1@round=3;restart=2s, stop:main_server@t=20s;for=150s, "
            "outage:client_0@round=2;for=10s"
        ),
        launcher.ops(),
    )
    assert ex.next_due_s() == 20.0
    assert ex.poll(5.0, round_index=1) == []
    events = ex.poll(6.0, round_index=2)  # the outage fires on round 2
    assert [e.action for e in events] == ["link down client_0 at +0s"]
    assert ex.poll(15.0, round_index=2) == []
    assert [e.action for e in ex.poll(16.0, 2)] == ["link up client_0 at +10s"]
    ex.poll(25.0, round_index=3)  # stop (due at 20, polled late) and the kill
    assert launcher.log[-2:] == [("signal", 200, "SIGSTOP"), ("signal", 101, "SIGKILL")]
    assert ex.events[-2].due_s == 20.0 and ex.events[-2].done_s == 25.0
    ex.poll(26.9, 3)
    assert launcher.log[-1] == ("signal", 101, "SIGKILL")
    ex.poll(27.0, 3)
    assert launcher.log[-1] == ("restart", "client_1")
    assert not ex.done and ex.next_due_s() == 170.0
    ex.poll(170.0, 9)
    assert launcher.log[-1] == ("signal", 200, "SIGCONT")
    assert ex.done and ex.next_due_s() is None
    assert all(e.ok for e in ex.events) and len(ex.events) == 6


def test_a_failed_action_is_recorded_and_the_rest_goes_on() -> None:
    launcher = FakeLauncher()
    ex = FaultExecutor(
        parse_faults("kill:client_0@t=1s, kill:client_0@t=2s;restart=1s"), launcher.ops()
    )
    ex.poll(1.0)
    events = ex.poll(2.0)  # client_0 is gone: nothing to signal
    assert not events[0].ok and "not running" in events[0].error
    ex.poll(3.0)
    assert launcher.log[-1] == ("restart", "client_0")
    summary = ex.summary()
    assert summary[1]["fault"] == "kill:client_0@t=2s;restart=1s"
    assert [a["error"] is None for a in summary[1]["actions"]] == [False, True]


def test_a_raising_op_does_not_stop_the_executor() -> None:
    def boom(name: str, on: bool) -> None:
        raise RuntimeError("no netns")

    ex = FaultExecutor(
        parse_faults("outage:client_0@t=0s;for=1s"),
        FaultOps(pid_of=lambda n: None, restart=lambda n: None, set_outage=boom),
    )
    ex.poll(0.0)
    ex.poll(1.0)
    assert [e.error for e in ex.events] == ["RuntimeError: no netns"] * 2 and ex.done


def test_round_faults_wait_for_a_round() -> None:
    ex = FaultExecutor(parse_faults("kill:client_0@round=1"), FakeLauncher().ops())
    assert ex.poll(100.0) == [] and ex.poll(100.0, round_index=0) == []
    assert ex.next_due_s() is None and not ex.done
    assert len(ex.poll(101.0, round_index=4)) == 1 and ex.done


def test_same_due_time_keeps_spec_order() -> None:
    launcher = FakeLauncher()
    ex = FaultExecutor(
        parse_faults("kill:fed_server@t=1s;restart=0s, kill:main_server@t=1s"), launcher.ops()
    )
    ex.poll(1.0)
    assert launcher.log == [
        ("signal", 300, "SIGKILL"),
        ("restart", "fed_server"),
        ("signal", 200, "SIGKILL"),
    ]


def test_run_loop_stops_when_done() -> None:
    launcher = FakeLauncher()
    ex = FaultExecutor(parse_faults("stop:client_0@t=0s;for=0s"), launcher.ops())
    clock = iter(range(100))
    ex.run(threading.Event(), lambda: float(next(clock)), lambda: None, interval_s=0.0)
    assert ex.done and [entry[2] for entry in launcher.log] == ["SIGSTOP", "SIGCONT"]
