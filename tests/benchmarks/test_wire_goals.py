"""benchmarks/wire_goals.py: each goal judged on its own bound and direction,
every round against a server of its own, stopped whatever the round did."""

from __future__ import annotations

import math

import pytest


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


def test_a_round_in_its_own_client_process_measures_every_goal(goals) -> None:
    # The CLI's path: a child client process (--one-round) with its own
    # server child, a few repetitions each; the parent reads its JSON.
    ratios = goals.round_in_child((1, 1, 1), timeout_s=300)
    assert set(ratios) == {g.key for g in goals.GOALS}
    assert all(math.isfinite(x) and x > 0 for x in ratios.values()), ratios


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
    with pytest.raises(RuntimeError, match="round against 127.0.0.1:[0-9]+ failed"):
        goals.one_round((1, 1, 1))
    assert len(children) == 1
    assert children[0].poll() is not None  # stopped, and waited for
    assert wt.SERVER_PID is None


def test_a_round_that_fails_in_its_child_is_an_error_with_its_reason(goals) -> None:
    with pytest.raises(RuntimeError, match=r"round failed \(exit 2\).*--reps"):
        goals.round_in_child((1, 1, 0))  # refused by the child's own parser


@pytest.mark.parametrize(
    ("argv", "field"),
    [(["--rounds", "0"], "--rounds"), (["--reps-scale", "-1"], "--reps-scale")],
)
def test_bad_arguments_exit_2_naming_the_field(goals, capsys, argv, field) -> None:
    with pytest.raises(SystemExit) as exc:
        goals.main(argv)
    assert exc.value.code == 2
    assert field in capsys.readouterr().err
