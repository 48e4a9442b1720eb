"""The launcher's process lifecycle: children tracked from birth, interrupts that
reach every one of them, and output paths checked before anything runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fedsllm.config import load_scenario
from fedsllm.errors import ConfigError
from fedsllm.launch import (
    ProcessSet,
    RunInterrupted,
    deferred_stop_signals,
    fresh_out_dir,
    role_env,
)

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
