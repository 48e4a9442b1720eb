"""Tests for fedsllm/device.py (device-speed padding and overrun records)."""

from __future__ import annotations

import pytest

from fedsllm.device import DevicePacer
from fedsllm.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(flops_per_s: float, dilation: float = 1.0) -> tuple[DevicePacer, FakeClock]:
    fake = FakeClock()
    return DevicePacer(flops_per_s, dilation, clock=fake.clock, sleep=fake.sleep), fake


@pytest.mark.parametrize(
    "flops_per_s,flops,compute_s,dilation,expected_real_s",
    [
        (1e9, 2e9, 0.5, 1.0, 2.0),  # padded 1.5 s
        (2e9, 1e9, 0.1, 1.0, 0.5),
        (1e9, 1e9, 0.2, 4.0, 4.0),  # dilation stretches the padded step
        (1e12, 0.0, 0.0, 1.0, 0.0),
    ],
)
def test_step_takes_the_emulated_time(flops_per_s, flops, compute_s, dilation, expected_real_s):
    pacer, fake = make(flops_per_s, dilation)
    with pacer.step(flops, "fwd") as rec:
        fake.now += compute_s
    assert fake.now == pytest.approx(expected_real_s)
    assert rec.done
    assert rec.target_s == pytest.approx(flops / flops_per_s)
    assert rec.compute_s == pytest.approx(compute_s / dilation)
    assert rec.padded_s == pytest.approx((expected_real_s - compute_s) / dilation)
    assert rec.overrun_s == 0.0
    assert pacer.overruns == []


def test_overrun_is_recorded_not_hidden():
    pacer, fake = make(1e9, dilation=2.0)
    with pacer.step(1e9, "fwd"):  # target 1 s emulated = 2 s real
        fake.now += 1.0
    with pacer.step(1e9, "bwd") as rec:
        fake.now += 5.0  # host too slow: 2.5 s emulated vs 1 s target
    with pacer.step(5e8, "bwd"):
        fake.now += 3.0  # 1.5 s emulated vs 0.5 s target
    assert fake.sleeps == pytest.approx([1.0])  # only the first step was padded
    assert rec.overran and rec.overrun_s == pytest.approx(1.5)
    assert [r.label for r in pacer.overruns] == ["bwd", "bwd"]
    s = pacer.summary()
    assert s.num_steps == 3
    assert s.num_overruns == 2
    assert s.overrun_s == pytest.approx(2.5)
    assert s.overrun_by_label == pytest.approx({"bwd": 2.5})
    assert s.target_s == pytest.approx(2.5)
    assert s.compute_s == pytest.approx(0.5 + 2.5 + 1.5)
    assert s.padded_s == pytest.approx(0.5)


def test_step_that_raises_is_not_padded_or_recorded():
    pacer, fake = make(1.0)
    with pytest.raises(RuntimeError), pacer.step(10.0, "fwd"):
        raise RuntimeError("boom")
    assert fake.sleeps == []
    assert pacer.records == []


@pytest.mark.parametrize(
    "args,field",
    [((0.0,), "flops_per_s"), ((float("inf"),), "flops_per_s"), ((1e9, 0.0), "time_dilation")],
)
def test_bad_construction_raises_config_error(args, field):
    with pytest.raises(ConfigError) as err:
        DevicePacer(*args)
    assert err.value.path == field


def test_negative_flops_raises():
    pacer, _ = make(1e9)
    with pytest.raises(ConfigError), pacer.step(-1.0):
        pass
