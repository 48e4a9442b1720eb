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


def test_every_round_measures_all_goals_against_a_server_of_its_own(goals, benchmark_script):
    wt = goals.wt
    started: list[str] = []
    stopped: list[str] = []

    def start():
        server = wt._start_server()
        address = f"127.0.0.1:{server.bench_port}"
        started.append(address)

        def stop() -> None:
            wt.rpc.stop_server(server, 0.5)
            stopped.append(address)

        return None, address, stop

    reported: list[tuple[int, dict[str, float]]] = []
    results = goals.run_rounds(
        2, (1, 1, 1), start, lambda i, _load, ratios: reported.append((i, ratios))
    )
    assert len(set(started)) == 2 and stopped == started
    assert [i for i, _ in reported] == [0, 1]
    for ratios in results:
        assert set(ratios) == {g.key for g in goals.GOALS}
        assert all(math.isfinite(x) and x > 0 for x in ratios.values()), ratios
    assert wt.SERVER_PID is None


def test_a_failed_round_still_stops_its_server(goals, monkeypatch) -> None:
    stopped: list[int] = []

    def fail(address, reps):
        raise RuntimeError(f"round against {address} failed")

    monkeypatch.setattr(goals, "measure_round", fail)
    with pytest.raises(RuntimeError, match="against here failed"):
        goals.run_rounds(3, (1, 1, 1), lambda: (4242, "here", lambda: stopped.append(1)))
    assert stopped == [1]  # the first round's server, and no round after it
    assert goals.wt.SERVER_PID is None


@pytest.mark.parametrize(
    ("argv", "field"),
    [(["--rounds", "0"], "--rounds"), (["--reps-scale", "-1"], "--reps-scale")],
)
def test_bad_arguments_exit_2_naming_the_field(goals, capsys, argv, field) -> None:
    with pytest.raises(SystemExit) as exc:
        goals.main(argv)
    assert exc.value.code == 2
    assert field in capsys.readouterr().err
