"""benchmarks/wire_goals.py: each goal judged on its own bound and direction,
every round against a server of its own, stopped whatever the round did."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest

_ISSUE_KEYS = (
    "upload_small",
    "upload_small_validated",
    "upload_big",
    "upload_big_validated",
    "echo",
    "echo_validated",
)
KEYS = (*_ISSUE_KEYS, *(f"{k}_aio" for k in _ISSUE_KEYS))
"""Every goal's key: issue 13's six, against sync raw, then the same against raw on aio."""


@pytest.fixture(scope="module")
def goals(benchmark_script):
    benchmark_script("wire_throughput")  # what wire_goals imports
    return benchmark_script("wire_goals")


def _round(goals, **values: float) -> dict[str, float]:
    ratios = {g.key: (0.95 if g.at_least else 1.1) for g in goals.GOALS}
    ratios.update(values)
    return ratios


def test_a_rate_meets_its_bound_from_above_and_a_time_from_below(goals) -> None:
    rounds = [
        _round(goals, upload_small=0.9, echo=1.2),  # on the bounds: met
        _round(goals, upload_small=0.89, echo=1.21),  # just past them: not
        _round(goals, upload_small=1.05, echo=0.98),
    ]
    by_key = {s.goal.key: s for s in goals.summarize(rounds)}
    assert list(by_key) == [g.key for g in goals.GOALS]
    small, echo = by_key["upload_small"], by_key["echo"]
    assert (small.met, small.rounds, small.median, small.low, small.high) == (2, 3, 0.9, 0.89, 1.05)
    assert (echo.met, echo.rounds, echo.median, echo.low, echo.high) == (2, 3, 1.2, 0.98, 1.21)
    assert by_key["echo_validated"].met == 3  # 1.1 everywhere: under 1.2
    assert by_key["upload_big"].met == 3


def test_no_rounds_is_an_error_not_an_empty_verdict(goals) -> None:
    with pytest.raises(ValueError, match="no rounds"):
        goals.summarize([])


def test_rounds_are_reported_in_order_with_their_load(goals) -> None:
    given = iter([{"n": 1.0}, {"n": 2.0}, {"n": 3.0}])
    reported: list[tuple[int, float, dict[str, float]]] = []
    results = goals.run_rounds(3, lambda: next(given), lambda *args: reported.append(args))
    assert results == [{"n": 1.0}, {"n": 2.0}, {"n": 3.0}]
    assert [(i, r) for i, _, r in reported] == [(0, {"n": 1.0}), (1, {"n": 2.0}), (2, {"n": 3.0})]
    assert all(load >= 0 for _, load, _ in reported)


def test_uploads_are_judged_as_rates_and_echoes_as_times(goals, monkeypatch) -> None:
    # Raw takes 1 s (raw on aio 0.5 s), the project 2 s, validated 4 s: an
    # upload at half raw's rate reads 0.5 (which misses 0.9), an echo at twice
    # raw's time 2.0; against raw on aio, 0.25 and 4.0.
    wt = goals.wt

    def timing(seconds: float):
        return wt.Timing(seconds, 0.0, 0.0, [seconds] * 3)

    def figures(*_args, **_kwargs):
        return {
            "raw": timing(1.0),
            "raw_aio": timing(0.5),
            "project": timing(2.0),
            "validated": timing(4.0),
        }

    monkeypatch.setattr(wt, "bench_stream", figures)
    monkeypatch.setattr(wt, "bench_echo", figures)
    ratios = goals.measure_round("unused", (1, 1, 1))
    assert ratios == {
        "upload_small": 0.5,
        "upload_small_validated": 0.25,
        "upload_big": 0.5,
        "upload_big_validated": 0.25,
        "echo": 2.0,
        "echo_validated": 4.0,
        "upload_small_aio": 0.25,
        "upload_small_validated_aio": 0.125,
        "upload_big_aio": 0.25,
        "upload_big_validated_aio": 0.125,
        "echo_aio": 4.0,
        "echo_validated_aio": 8.0,
    }
    assert set(ratios) == {g.key for g in goals.GOALS}


@pytest.mark.slow
def test_a_round_in_its_own_client_process_measures_every_goal(goals) -> None:
    # The CLI's path: a child client process (--one-round) with its own
    # server child, a few repetitions each; the parent reads its ratio line.
    ratios = goals.round_in_child((1, 1, 1), timeout_s=300)
    assert set(ratios) == {g.key for g in goals.GOALS}
    assert all(math.isfinite(x) and x > 0 for x in ratios.values()), ratios


@pytest.mark.slow
def test_a_failed_round_still_stops_its_server(goals, monkeypatch) -> None:
    wt = goals.wt
    children = []
    start_child = wt.start_child

    def recorded(*args, **kwargs):
        child, address = start_child(*args, **kwargs)
        children.append(child)
        return child, address

    def fail(address, reps):
        assert children[0].pid == wt.SERVER_PID  # the CPU readings follow this server
        raise RuntimeError(f"round against {address} failed")

    monkeypatch.setattr(wt, "start_child", recorded)
    monkeypatch.setattr(goals, "measure_round", fail)
    try:
        with pytest.raises(RuntimeError, match="round against 127.0.0.1:[0-9]+ failed"):
            goals.one_round((1, 1, 1))
        assert len(children) == 1
        assert children[0].poll() is not None  # stopped, and waited for
        assert wt.SERVER_PID is None
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.slow
def test_a_terminated_round_stops_its_server_by_pid(goals) -> None:
    # What round_in_child's timeout sends: SIGTERM to the child client once
    # its server is up; the child stops that server before it exits.
    child = subprocess.Popen(
        [sys.executable, goals.__file__, "--one-round", "--reps", "100000,1000,100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server_pid = None
    try:
        for line in child.stderr:  # type: ignore[union-attr]
            found = re.match(r"round: server pid (\d+) at ", line)
            if found:
                server_pid = int(found.group(1))
                break
        assert server_pid is not None, "the child never reported its server"
        child.terminate()
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        with pytest.raises(ProcessLookupError):  # stopped and reaped by the child
            os.kill(server_pid, 0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]


def test_a_round_past_its_timeout_is_an_error(goals) -> None:
    # The child is still importing torch after 0.2 s.
    with pytest.raises(RuntimeError, match=r"round timed out after 0 s"):
        goals.round_in_child((1, 1, 1), timeout_s=0.2)


def test_a_round_that_fails_in_its_child_is_an_error_with_its_reason(goals) -> None:
    with pytest.raises(
        RuntimeError, match=r"(?s)round failed \(exit 2\).*argument --reps: want three positive"
    ):
        goals.round_in_child((1, 1, 0))  # refused by the child's own parser


@pytest.mark.parametrize(
    ("stdout", "reason"),
    [
        ("", "0 ratio lines"),
        ("noise\n", "0 ratio lines"),
        ("MARK[1, 2]\n", "printed list"),
        ("MARK{bad\n", "unreadable"),
        ('MARK{"echo": 1.1}\n', "no ratio for"),
        ("MARK" + json.dumps({k: 1.0 for k in KEYS} | {"echo": None}), "not finite numbers"),
        ("MARK" + json.dumps({k: 1.0 for k in KEYS} | {"echo": float("nan")}), "not finite"),
        ("MARK{}\nMARK{}\n", "2 ratio lines"),
    ],
)
def test_a_childs_ratio_line_is_read_strictly(goals, stdout: str, reason: str) -> None:
    with pytest.raises(RuntimeError, match=reason):
        goals.parse_ratios(stdout.replace("MARK", goals.RATIOS_MARK))


def test_a_childs_ratio_line_is_found_among_other_output(goals) -> None:
    ratios = {k: 0.5 + i for i, k in enumerate(KEYS)}
    stdout = f"a warning\n{goals.RATIOS_MARK}{json.dumps(ratios)}\nbye\n"
    assert goals.parse_ratios(stdout) == ratios


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "x"], "--rounds"),
        (["--reps-scale", "-1"], "--reps-scale"),
        (["--reps-scale", "nan"], "--reps-scale"),
        (["--reps-scale", "inf"], "--reps-scale"),
        (["--reps-scale", "abc"], "--reps-scale"),
        (["--one-round", "--reps", "1,2"], "--reps"),
    ],
)
def test_bad_arguments_exit_2_naming_the_field(goals, capsys, argv, field) -> None:
    with pytest.raises(SystemExit) as exc:
        goals.main(argv)
    assert exc.value.code == 2
    # The message's own line (the usage line above it names every option).
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(rf"error: (argument )?{re.escape(field)}( [A-Z_]+)?: ", message), message
