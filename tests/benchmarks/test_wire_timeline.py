"""wire_timeline.py's bookkeeping: the server's marks go to the case they
belong to, and a step's segments come out of its marks (the benchmark's
figures themselves are never asserted: they are timings)."""

from __future__ import annotations

from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def timeline(benchmark_script) -> ModuleType:
    benchmark_script("wire_throughput")  # which wire_timeline imports
    return benchmark_script("wire_timeline")


def _step(variant: str, t0: int) -> list[tuple[str, int]]:
    """A client's marks of one step starting at t0 ns (one request, one reply)."""
    return [
        (f"step {variant}", t0),
        ("request serialized", t0 + 1_000),
        ("reply deserialized", t0 + 5_000),
        ("end", t0 + 6_000),
    ]


def _server(t0: int) -> list[tuple[str, int]]:
    return [("request at handler", t0 + 2_000), ("reply produced", t0 + 3_000)]


def test_server_marks_go_to_their_case(timeline: ModuleType) -> None:
    first = _step("project", 0) + _step("raw", 10_000)
    second = _step("project", 20_000)
    server = _server(10_000) + _server(0) + _server(20_000)  # out of order
    ours = timeline.split_server(server, [first, second])
    assert sorted(ours[0]) == sorted(_server(0) + _server(10_000))
    assert ours[1] == _server(20_000)


def test_segments_of_a_step(timeline: ModuleType) -> None:
    steps = timeline._steps(_step("project", 0) + _server(0))
    (step,) = steps["project"]
    # client build 1, upload 1, turnaround 1, first reply 2, rest 0, finish 1 (µs)
    assert timeline._segments(step) == [1.0, 1.0, 1.0, 2.0, 0.0, 1.0]


def test_a_step_missing_a_mark_has_no_segments(timeline: ModuleType) -> None:
    steps = timeline._steps(_step("project", 0))  # no server marks
    assert timeline._segments(steps["project"][0]) is None
