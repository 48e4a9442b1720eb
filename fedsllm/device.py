"""Device-speed emulation: pad each compute step to FLOPs / emulated speed.

A step that the emulated device would finish in flops / flops_per_s seconds
takes exactly that long (times `time_dilation`) in real time: the pacer
measures the real compute inside the step and sleeps the remainder. When the
host is slower than the emulated device there is nothing to pad; the excess
is recorded as an overrun and exposed (`overruns`, `summary()`), never
hidden, because it means the run's timing no longer matches the model.
Every reported duration is in emulated seconds (dilation divided back out).
FLOP counts come from fedsllm.model.counts; this module only keeps time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fedsllm.errors import ConfigError


@dataclass(slots=True)
class StepRecord:
    """One paced step, in emulated seconds; filled in when the step ends."""

    label: str
    flops: float
    target_s: float
    """flops / flops_per_s: what the emulated device takes."""
    compute_s: float = math.nan
    """Measured real compute time / dilation."""
    padded_s: float = 0.0
    """Sleep added to reach the target (real sleep / dilation)."""
    overrun_s: float = 0.0
    """compute_s - target_s when the host was slower, else 0."""
    done: bool = False

    @property
    def overran(self) -> bool:
        """True when the host computed slower than the emulated device."""
        return self.overrun_s > 0


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceSummary:
    """Totals over all completed steps, emulated seconds."""

    num_steps: int
    num_overruns: int
    target_s: float
    compute_s: float
    padded_s: float
    overrun_s: float
    overrun_by_label: dict[str, float] = field(default_factory=dict)
    """Overrun seconds per step label (forward, backward, ...)."""


class DevicePacer:
    """Pads compute steps to an emulated device speed; thread-safe records.

    Usage::

        with pacer.step(flops, "client_fwd") as rec:
            out = part(x)
        # rec.compute_s, rec.padded_s, rec.overrun_s are now set

    A step whose body raises is neither padded nor recorded.
    """

    def __init__(
        self,
        flops_per_s: float,
        time_dilation: float = 1.0,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (isinstance(flops_per_s, int | float) and math.isfinite(flops_per_s)):
            raise ConfigError("flops_per_s", flops_per_s, "must be a finite number > 0")
        if flops_per_s <= 0:
            raise ConfigError("flops_per_s", flops_per_s, "must be > 0")
        if not (math.isfinite(time_dilation) and time_dilation > 0):
            raise ConfigError("time_dilation", time_dilation, "must be > 0")
        self.flops_per_s = float(flops_per_s)
        self.time_dilation = float(time_dilation)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._records: list[StepRecord] = []

    def target_s(self, flops: float) -> float:
        """Emulated seconds of a step of `flops` (undilated)."""
        return flops / self.flops_per_s

    @contextmanager
    def step(self, flops: float, label: str = "compute") -> Iterator[StepRecord]:
        """Time the body and sleep until flops / speed * dilation has passed."""
        if not (isinstance(flops, int | float) and math.isfinite(flops) and flops >= 0):
            raise ConfigError("flops", flops, "must be a finite number >= 0")
        dil = self.time_dilation
        rec = StepRecord(label=label, flops=float(flops), target_s=self.target_s(flops))
        start = self._clock()
        yield rec
        elapsed = self._clock() - start
        remaining = rec.target_s * dil - elapsed
        if remaining > 0:
            self._sleep(remaining)
            rec.padded_s = remaining / dil
        rec.compute_s = elapsed / dil
        rec.overrun_s = max(0.0, rec.compute_s - rec.target_s)
        rec.done = True
        with self._lock:
            self._records.append(rec)

    @property
    def records(self) -> list[StepRecord]:
        """Every completed step, oldest first (a copy)."""
        with self._lock:
            return list(self._records)

    @property
    def overruns(self) -> list[StepRecord]:
        """The completed steps on which the host was slower than the device."""
        with self._lock:
            return [r for r in self._records if r.overran]

    def summary(self) -> DeviceSummary:
        """Totals for reports (emulated seconds)."""
        with self._lock:
            recs = list(self._records)
        by_label: dict[str, float] = {}
        for r in recs:
            if r.overran:
                by_label[r.label] = by_label.get(r.label, 0.0) + r.overrun_s
        return DeviceSummary(
            num_steps=len(recs),
            num_overruns=sum(1 for r in recs if r.overran),
            target_s=sum(r.target_s for r in recs),
            compute_s=sum(r.compute_s for r in recs),
            padded_s=sum(r.padded_s for r in recs),
            overrun_s=sum(r.overrun_s for r in recs),
            overrun_by_label=by_label,
        )
