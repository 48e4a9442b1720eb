"""Clock offset estimation (fedsllm/clock.py) with a simulated remote clock."""

from __future__ import annotations

import pytest

from fedsllm.clock import measure_offset, offset_from_samples


def test_tightest_sample_wins() -> None:
    samples = [(0.0, 10.6, 1.0), (2.0, 12.05, 2.1), (3.0, 13.9, 4.0)]
    est = offset_from_samples(samples)
    assert est.offset_s == pytest.approx(12.05 - 2.05)
    assert est.rtt_s == pytest.approx(0.1) and est.num_samples == 3


def test_recovers_a_known_offset_with_asymmetric_delays() -> None:
    now = [100.0]
    true_offset = -3.25
    delays = iter([(0.010, 0.030), (0.002, 0.002), (0.020, 0.001)])

    def clock() -> float:
        return now[0]

    def server_time() -> float:
        up, down = next(delays)
        now[0] += up
        reading = now[0] + true_offset
        now[0] += down
        return reading

    est = measure_offset(server_time, num_samples=3, clock=clock)
    assert est.rtt_s == pytest.approx(0.004)
    assert abs(est.offset_s - true_offset) <= est.rtt_s / 2


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        offset_from_samples([])
