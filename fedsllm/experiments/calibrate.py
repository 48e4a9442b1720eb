"""Fit the convergence constants a and v (docs/MODEL.md section 4) from short real runs.

docs/MODEL.md models rounds-to-target as N = a / (1 - eta) with the local accuracy
eta reached by n = v * log2(1/eta) local iterations, i.e. for a run with n
local steps per round

    eta(n)    = 2^(-n/v)
    rounds(n) = a / (1 - 2^(-n/v))

For an LLM a and v have no closed form, so they are measured: one
fixed_steps run per candidate n, each counting the global rounds until the
validation loss first reaches the target. `fit_convergence` is the pure
least-squares fit of those points; `diagnose_calibration` decides whether the
fit measured anything (a least-squares fit of two constants always returns
numbers, and a bounded one returns a tiny rmse exactly when the data leave a
constant unidentified) and which targets the runs would support;
`calibration_scenario` builds the runs; `run_calibration` executes them
through fedsllm.launch. Writing the calibrated scenario file is
fedsllm.experiments.scenario_toml's job, the CLI is fedsllm.cli.calibrate's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsllm.config import ScenarioConfig
from fedsllm.errors import ConfigError
from fedsllm.telemetry.records import TelemetryRecord

log = logging.getLogger(__name__)

MIN_POINTS = 2
"""Distinct step counts that must reach the target for a fit of two constants."""
V_BOUNDS = (1e-3, 1e4)
"""Search range of v (local iterations per halving of eta)."""
A_MIN = 1e-6
"""a must stay positive (N(eta) > 0) while fitting; a usable a is >= A_USABLE."""
A_USABLE = 1.0
"""N(eta) = a / (1 - eta) tends to a as eta -> 0, and the planner may pick any eta in
(0, 1): a < 1 would let it plan fewer than one global round."""
BOUND_RTOL = 1e-2
"""A fitted constant within this relative distance of a search bound sits at the bound."""
V_RANGE_RATIO = 100.0
"""v more than this many times the largest tested n (or below the smallest n over
it) is an extrapolation: the runs never saw where local steps stop paying off
(or where they start to)."""


def predicted_rounds(num_steps: Any, a: float, v: float) -> Any:
    """rounds(n) = a / (1 - 2^(-n/v)) (docs/MODEL.md section 4 with eta = 2^(-n/v)); numpy-aware."""
    import numpy as np

    n = np.asarray(num_steps, dtype=float)
    return a / (-np.expm1(-n * math.log(2.0) / v))


@dataclass(frozen=True)
class ConvergenceFit:
    """Least-squares (a, v) and how well they describe the measured rounds."""

    a: float
    v: float
    num_steps: tuple[int, ...]
    rounds: tuple[float, ...]
    predicted: tuple[float, ...]
    residuals: tuple[float, ...]
    """predicted - measured rounds, per point."""
    rmse: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _best_a(x: Any, y: Any) -> float:
    """Closed-form least-squares a for y = a * x (x = 1 / (1 - eta))."""
    return max(float((x * y).sum() / (x * x).sum()), A_MIN)


def fit_convergence(num_steps: Sequence[int], rounds: Sequence[float]) -> ConvergenceFit:
    """Fit rounds(n) = a / (1 - 2^(-n/v)) to measured (n, rounds) by least squares.

    a enters linearly, so for each v the best a is closed-form; a log grid
    over v brackets the optimum and scipy's bounded least_squares refines
    both (a > 0, v in V_BOUNDS). Raises ConfigError when fewer than two
    distinct step counts are given (two constants need two points).
    """
    import numpy as np
    from scipy.optimize import least_squares

    n = np.asarray(list(num_steps), dtype=float)
    y = np.asarray(list(rounds), dtype=float)
    if n.shape != y.shape:
        raise ConfigError("rounds", len(y), f"must list one value per step count ({len(n)})")
    if len(set(n.tolist())) < MIN_POINTS:
        raise ConfigError(
            "--steps", [int(x) for x in n], f"need >= {MIN_POINTS} distinct step counts to fit a, v"
        )
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise ConfigError("--steps", n.tolist(), "every step count must be > 0")
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ConfigError("rounds", y.tolist(), "every round count must be > 0")

    def x_of(v: float) -> Any:
        return predicted_rounds(n, 1.0, v)  # 1 / (1 - eta(n)): rounds per unit of a

    grid = np.logspace(math.log10(V_BOUNDS[0]), math.log10(V_BOUNDS[1]), 400)
    x_grid = predicted_rounds(n[None, :], 1.0, grid[:, None])  # one row per grid v
    a_grid = np.maximum((x_grid * y).sum(axis=1) / (x_grid * x_grid).sum(axis=1), A_MIN)
    costs = ((a_grid[:, None] * x_grid - y) ** 2).sum(axis=1)
    v0 = float(grid[int(np.argmin(costs))])
    a0 = _best_a(x_of(v0), y)

    def resid(p: Any) -> Any:
        return p[0] * x_of(p[1]) - y

    sol = least_squares(
        resid,
        x0=[a0, v0],
        bounds=([A_MIN, V_BOUNDS[0]], [np.inf, V_BOUNDS[1]]),
        x_scale="jac",
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
    )
    a, v = float(sol.x[0]), float(sol.x[1])
    if float((resid([a, v]) ** 2).sum()) > float((resid([a0, v0]) ** 2).sum()):
        a, v = a0, v0  # the refinement never makes the fit worse than the grid's
    pred = predicted_rounds(n, a, v)
    res = pred - y
    return ConvergenceFit(
        a=a,
        v=v,
        num_steps=tuple(int(x) for x in n),
        rounds=tuple(float(x) for x in y),
        predicted=tuple(float(x) for x in pred),
        residuals=tuple(float(x) for x in res),
        rmse=float(math.sqrt(float((res**2).mean()))),
    )


# ---------------------------------------------------------------- runs


def parse_steps(text: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); ConfigError naming --steps for anything else."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    values: list[int] = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise ConfigError("--steps", item, "must be a positive integer") from None
        if value < 1:
            raise ConfigError("--steps", item, "must be a positive integer")
        if value in values:
            raise ConfigError("--steps", item, "is listed twice")
        values.append(value)
    if len(values) < MIN_POINTS:
        raise ConfigError(
            "--steps", text, f"must list >= {MIN_POINTS} distinct step counts (e.g. 1,2,4,8)"
        )
    return tuple(values)


def check_calibration_args(target_loss: float, max_rounds: int) -> None:
    if not (math.isfinite(target_loss) and target_loss > 0):
        raise ConfigError("--target-loss", target_loss, "must be a validation loss > 0")
    if max_rounds < 1:
        raise ConfigError("--max-rounds", max_rounds, "must be >= 1")


def calibration_scenario(
    base: ScenarioConfig, num_steps: int, max_rounds: int, target_loss: float
) -> ScenarioConfig:
    """The run for one step count: policy fixed_steps, n local steps, R rounds, eval every round.

    Link shaping and compute pacing are turned off: they change when things
    happen, not what is learned, and rounds-to-target is all that is measured.
    """
    training = dataclasses.replace(
        base.training,
        num_local_steps=num_steps,
        num_rounds=max_rounds,
        eval_every=1,
        target_val_loss=target_loss,
    )
    policy = dataclasses.replace(base.policy, name="fixed_steps")
    link = dataclasses.replace(base.link, backend="none", emulate_compute=False)
    return dataclasses.replace(base, training=training, policy=policy, link=link)


CALIBRATE_OWNED: dict[str, str] = {
    "training.num_local_steps": "calibrate's --steps",
    "training.num_rounds": "calibrate's --max-rounds",
    "training.eval_every": "calibrate (every round is evaluated)",
    "training.target_val_loss": "calibrate's --target-loss",
    "policy": "calibrate (its runs are fixed_steps)",
    "link.backend": "calibrate (its runs are unshaped)",
    "link.emulate_compute": "calibrate (its runs are not paced)",
}
"""The fields `calibration_scenario` sets whatever the scenario says; a --set of
one of them is refused rather than dropped."""


def rounds_to_target(val_losses: dict[int, float], target_loss: float) -> int | None:
    """Global rounds until the validation loss first is <= target: round r counts r + 1.

    `val_losses` maps "after round r" to the loss (r = -1: before training).
    None = never reached (or reached only before training, which says
    nothing about convergence speed).
    """
    for rnd in sorted(val_losses):
        if rnd >= 0 and math.isfinite(val_losses[rnd]) and val_losses[rnd] <= target_loss:
            return rnd + 1
    return None


@dataclass(frozen=True)
class CalibrationPoint:
    """One calibration run's outcome."""

    num_steps: int
    rounds: int | None
    """Rounds to the target; None = not reached within max_rounds."""
    run_dir: str
    initial_val_loss: float
    final_val_loss: float
    best_val_loss: float
    note: str = ""
    val_curve: tuple[float, ...] = ()
    """Validation loss after round 0, 1, ... (NaN where not evaluated); () = unknown.
    Kept so that other targets can be tried without running again."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def point_from_records(
    num_steps: int, records: list[TelemetryRecord], target_loss: float, run_dir: str
) -> CalibrationPoint:
    """Rounds-to-target of a finished run from its val_loss trace events."""
    from fedsllm.summary import final_val_loss, initial_val_loss, val_losses

    val = val_losses(records)
    after = {r: x for r, x in val.items() if r >= 0}
    rounds = rounds_to_target(val, target_loss)
    note = ""
    initial = initial_val_loss(val)
    if rounds is None:
        note = f"val loss never <= {target_loss:g} within {len(after)} rounds"
    if math.isfinite(initial) and initial <= target_loss:
        note = (note + "; " if note else "") + (f"initial val loss {initial:.4f} already <= target")
    curve = tuple(after.get(r, math.nan) for r in range(max(after) + 1)) if after else ()
    finite = [x for x in after.values() if math.isfinite(x)]
    return CalibrationPoint(
        num_steps=num_steps,
        rounds=rounds,
        run_dir=run_dir,
        initial_val_loss=initial,
        final_val_loss=final_val_loss(val),
        best_val_loss=min(finite) if finite else math.nan,
        note=note,
        val_curve=curve,
    )


@dataclass(frozen=True)
class FitProblem:
    """One reason a fit must not be written: the flag to change, its value, and why."""

    flag: str
    value: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class CalibrationFit:
    """The fit of a set of calibration runs and what decides whether it measured a, v.

    Per-run fields follow the order of the runs. `problems` empty = usable;
    otherwise `error()` is the one-line ConfigError the CLI exits 2 with.
    """

    target_loss: float
    max_rounds: int
    num_steps: tuple[int, ...]
    """Local steps of every run."""
    rounds: tuple[float | None, ...]
    """Rounds to the target per run; None = never reached within max_rounds."""
    best_val_loss: tuple[float, ...]
    """Lowest validation loss each run reached (NaN = never evaluated)."""
    used_steps: tuple[int, ...]
    """Step counts of the runs that reached the target and so entered the fit."""
    distinct_rounds: tuple[float, ...]
    """Distinct rounds-to-target among those runs (one value carries no v)."""
    fit: ConvergenceFit | None
    """None when fewer than MIN_POINTS distinct step counts reached the target."""
    at_bound: tuple[str, ...]
    """Fitted constants sitting at a search bound, e.g. 'v = 10000 at its upper bound'."""
    problems: tuple[FitProblem, ...]
    notes: tuple[str, ...]
    """Caveats that do not stop the write (e.g. a fit of two points is exact by design)."""
    target_ranges: tuple[tuple[float, float], ...] | None
    """Half-open intervals [lo, hi) of targets whose rounds from these same runs would
    give a usable fit; () = none; None = not tried (a run carries no loss curve)."""

    @property
    def usable(self) -> bool:
        return self.fit is not None and not self.problems

    def error(self) -> ConfigError:
        """One ConfigError naming the first problem's flag, all reasons, and what to pick."""
        if not self.problems:
            raise ValueError("error() of a usable fit")
        first = self.problems[0]
        parts = [*(p.reason for p in self.problems), self.target_advice()]
        return ConfigError(first.flag, first.value, "; ".join(x for x in parts if x))

    def raise_if_unusable(self) -> ConvergenceFit:
        """The fit, or the ConfigError that says what to change."""
        if self.problems or self.fit is None:
            raise self.error()
        return self.fit

    def target_advice(self) -> str:
        """Which --target-loss these runs support, in one clause ('' = unknown)."""
        if self.target_ranges is None:
            return ""
        if not self.target_ranges:
            return "no target within the losses these runs reached gives a usable fit"
        shown = ", ".join(_format_range(lo, hi) for lo, hi in self.target_ranges[:3])
        more = f" (+{len(self.target_ranges) - 3} more)" if len(self.target_ranges) > 3 else ""
        lo, hi = max(self.target_ranges, key=lambda r: r[1] - r[0])
        return (
            f"targets these runs support: {shown}{more}, e.g. --target-loss {pick_target(lo, hi):g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_loss": self.target_loss,
            "max_rounds": self.max_rounds,
            "num_steps": list(self.num_steps),
            "rounds": list(self.rounds),
            "best_val_loss": list(self.best_val_loss),
            "used_steps": list(self.used_steps),
            "distinct_rounds": list(self.distinct_rounds),
            "fit": self.fit.to_dict() if self.fit is not None else None,
            "at_bound": list(self.at_bound),
            "problems": [p.to_dict() for p in self.problems],
            "notes": list(self.notes),
            "target_ranges": (
                None if self.target_ranges is None else [list(r) for r in self.target_ranges]
            ),
            "usable": self.usable,
        }


def _format_range(lo: float, hi: float) -> str:
    # Rounded inward, so that every value printed lies inside [lo, hi).
    lo_s, hi_s = math.ceil(lo * 1e4) / 1e4, math.floor(hi * 1e4) / 1e4
    if hi_s >= hi:
        hi_s -= 1e-4
    if lo_s > hi_s:
        return f"{pick_target(lo, hi)!r}"
    return f"{lo_s:.4f} to {hi_s:.4f}"


def pick_target(lo: float, hi: float) -> float:
    """A short number in [lo, hi), near its middle: what to type as --target-loss."""
    mid = (lo + hi) / 2.0
    for digits in range(1, 8):
        x = round(mid, digits)
        if lo <= x < hi:
            return x
    return lo


def _losses_text(points: Sequence[CalibrationPoint]) -> str:
    return ", ".join(
        f"n={p.num_steps} {p.best_val_loss:.4f}"
        if math.isfinite(p.best_val_loss)
        else f"n={p.num_steps} -"
        for p in points
    )


def _larger_steps(steps: Sequence[int]) -> str:
    values = sorted(set(steps))
    top = values[-1]
    return ",".join(str(n) for n in [*values, 2 * top, 4 * top])


def constant_problems(
    a: float,
    v: float,
    num_steps: Sequence[int],
    rounds: Sequence[float] = (),
    target_loss: float | None = None,
    tested_steps: Sequence[int] = (),
) -> list[FitProblem]:
    """Why fitted (a, v) do not describe runs at `num_steps` local steps; [] = they do.

    v far beyond the largest n means rounds fell like 1/n over every tested n:
    only a*v is measured, and the planner would extrapolate to thousands of
    local steps. v far below the smallest n means rounds did not depend on n.
    a < 1 lets N(eta) = a / (1 - eta) fall below one round (docs/MODEL.md
    section 4) for small eta, which the planner may pick and no run can do.
    A v problem is reported alone: it makes a meaningless too. `rounds`,
    `target_loss` and `tested_steps` (every --steps value) only sharpen the
    message.
    """
    steps = sorted({int(n) for n in num_steps})
    tested = sorted({int(n) for n in tested_steps} | set(steps))
    shown = ",".join(str(n) for n in tested)
    if v >= V_BOUNDS[1] * (1 - BOUND_RTOL) or v > V_RANGE_RATIO * steps[-1]:
        product = ""
        if len(rounds) == len(num_steps) and rounds:
            pairs = sorted(zip(num_steps, rounds, strict=True))
            product = " (rounds x n = " + ", ".join(f"{n * r:g}" for n, r in pairs) + ")"
        return [
            FitProblem(
                "--steps",
                shown,
                f"rounds fell like 1/n over n = {','.join(str(n) for n in steps)}{product}, "
                f"so v is not measured (fit ran to v = {v:.4g}, a = {a:.3g}; the planner "
                f"would pick ~v local steps): add larger step counts to --steps "
                f"(e.g. {_larger_steps(tested)}) or change --target-loss",
            )
        ]
    if v <= V_BOUNDS[0] * (1 + BOUND_RTOL) or v < steps[0] / V_RANGE_RATIO:
        return [
            FitProblem(
                "--steps",
                shown,
                f"rounds did not fall with n, so v is not measured (fit ran to v = {v:.4g}): "
                "include smaller step counts in --steps or change --target-loss",
            )
        ]
    if a < A_USABLE:
        return [
            FitProblem(
                "--target-loss",
                target_loss if target_loss is not None else a,
                f"fitted a = {a:.3g} < 1 would plan N = a/(1-eta) < 1 round for eta < "
                f"{1 - a:.3g} (the largest-n runs met the target in about one round): change "
                "--target-loss",
            )
        ]
    return []


def _bounds_hit(fit: ConvergenceFit) -> tuple[str, ...]:
    hit = []
    if fit.a <= A_MIN * (1 + BOUND_RTOL):
        hit.append(f"a = {fit.a:.4g} at its lower bound {A_MIN:g}")
    if fit.v <= V_BOUNDS[0] * (1 + BOUND_RTOL):
        hit.append(f"v = {fit.v:.4g} at its lower bound {V_BOUNDS[0]:g}")
    if fit.v >= V_BOUNDS[1] * (1 - BOUND_RTOL):
        hit.append(f"v = {fit.v:.4g} at its upper bound {V_BOUNDS[1]:g}")
    return tuple(hit)


def _reach_problems(
    points: Sequence[CalibrationPoint],
    used: Sequence[CalibrationPoint],
    target_loss: float,
    max_rounds: int,
) -> list[FitProblem]:
    """Too few runs reached the target, too few distinct n, or rounds that carry no v."""
    if len(used) < MIN_POINTS:
        if used:
            reached = ", ".join(f"n={p.num_steps}" for p in used)
            head = f"only {len(used)} of {len(points)} runs reached it (reached: {reached})"
        else:
            head = f"no run reached it (0 of {len(points)})"
        return [
            FitProblem(
                "--target-loss",
                target_loss,
                f"{head} within {max_rounds} rounds; lowest val loss per run: "
                f"{_losses_text(points)}; need >= {MIN_POINTS}: raise the target loss or "
                "run more rounds with --max-rounds",
            )
        ]
    distinct_n = sorted({p.num_steps for p in used})
    if len(distinct_n) < MIN_POINTS:
        return [
            FitProblem(
                "--steps",
                distinct_n,
                f"the runs that reached the target share one step count; need >= {MIN_POINTS} "
                "distinct counts in --steps",
            )
        ]
    distinct_rounds = sorted({float(p.rounds or 0) for p in used})
    if len(distinct_rounds) == 1:
        r = distinct_rounds[0]
        if r <= 1:
            why = "every run met it within its first round (a target that easy measures nothing)"
        else:
            why = f"every run took {r:g} rounds whatever n (local steps saved no rounds)"
        return [
            FitProblem(
                "--target-loss",
                target_loss,
                f"{why}, so a, v cannot be told apart; pick a lower --target-loss",
            )
        ]
    return []


def diagnose_calibration(
    points: Sequence[CalibrationPoint],
    target_loss: float,
    max_rounds: int,
    suggest: bool = True,
) -> CalibrationFit:
    """Fit the runs that reached the target and say whether the fit measured a and v.

    Never raises for a degenerate fit: the caller prints the diagnostics and
    then calls `raise_if_unusable`. With `suggest`, every target the runs'
    loss curves could have used is tried too (`target_ranges`).
    """
    used = [p for p in points if p.rounds is not None]
    problems = _reach_problems(points, used, target_loss, max_rounds)
    fit: ConvergenceFit | None = None
    at_bound: tuple[str, ...] = ()
    notes: list[str] = []
    if len({p.num_steps for p in used}) >= MIN_POINTS:
        fit = fit_convergence([p.num_steps for p in used], [float(p.rounds or 0) for p in used])
        at_bound = _bounds_hit(fit)
        if not problems:
            problems = constant_problems(
                fit.a,
                fit.v,
                fit.num_steps,
                fit.rounds,
                target_loss,
                [p.num_steps for p in points],
            )
        if not problems and len(used) == 2:
            notes.append("2 points for 2 constants: the fit is exact by design (rmse says nothing)")
    return CalibrationFit(
        target_loss=target_loss,
        max_rounds=max_rounds,
        num_steps=tuple(p.num_steps for p in points),
        rounds=tuple(p.rounds for p in points),
        best_val_loss=tuple(p.best_val_loss for p in points),
        used_steps=tuple(p.num_steps for p in used),
        distinct_rounds=tuple(sorted({float(p.rounds or 0) for p in used})),
        fit=fit,
        at_bound=at_bound,
        problems=tuple(problems),
        notes=tuple(notes),
        target_ranges=usable_target_ranges(points, max_rounds) if suggest else None,
    )


def usable_target_ranges(
    points: Sequence[CalibrationPoint], max_rounds: int
) -> tuple[tuple[float, float], ...] | None:
    """Targets [lo, hi) for which the same runs' curves give a usable fit.

    Rounds-to-target only change where the target crosses a measured loss, so
    trying each measured loss as the target covers every outcome; the rounds
    are constant on [loss_i, loss_i+1). Outcomes are fitted once each.
    """
    if not points or any(not p.val_curve for p in points):
        return None
    candidates = sorted({x for p in points for x in p.val_curve if math.isfinite(x)})
    verdicts: dict[tuple[float | None, ...], bool] = {}
    ranges: list[tuple[float, float]] = []
    for lo, hi in zip(candidates, candidates[1:], strict=False):
        trial = [
            dataclasses.replace(p, rounds=rounds_to_target(dict(enumerate(p.val_curve)), lo))
            for p in points
        ]
        key = tuple(p.rounds for p in trial)
        if key not in verdicts:
            verdicts[key] = _usable(trial, lo, max_rounds)
        if not verdicts[key]:
            continue
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return tuple(ranges)


def _usable(points: Sequence[CalibrationPoint], target_loss: float, max_rounds: int) -> bool:
    """`diagnose_calibration(...).usable` without fitting when the rounds alone refuse."""
    used = [p for p in points if p.rounds is not None]
    if _reach_problems(points, used, target_loss, max_rounds):
        return False
    fit = fit_convergence([p.num_steps for p in used], [float(p.rounds or 0) for p in used])
    return not constant_problems(fit.a, fit.v, fit.num_steps)


def fit_points(
    points: Sequence[CalibrationPoint], target_loss: float, max_rounds: int
) -> CalibrationFit:
    """`diagnose_calibration`, then ConfigError (exit 2) unless the fit is usable."""
    result = diagnose_calibration(points, target_loss, max_rounds)
    result.raise_if_unusable()
    return result


def calibrated_dict(base: ScenarioConfig, fit: ConvergenceFit) -> dict[str, Any]:
    """The input scenario as a dict with [convergence] a, v replaced by the fit."""
    data = base.to_dict()
    data["convergence"] = {**data["convergence"], "a": fit.a, "v": fit.v}
    return data


def write_calibrated(
    path: str | Path,
    base: ScenarioConfig,
    fit: ConvergenceFit,
    target_loss: float | None = None,
) -> Path:
    """Write the calibrated scenario TOML, checked to load back to the same scenario.

    Refuses (ConfigError, nothing written) constants that `constant_problems`
    rejects, so no caller can hand the planner an a, v that were never measured.
    """
    import tomllib

    from fedsllm.config import from_dict
    from fedsllm.experiments.scenario_toml import dumps_toml

    problems = constant_problems(fit.a, fit.v, fit.num_steps)
    if problems:
        raise ConfigError(problems[0].flag, problems[0].value, problems[0].reason)
    data = calibrated_dict(base, fit)
    target = f" val loss <= {target_loss:g}" if target_loss is not None else ""
    comment = (
        "Written by `fedsllm calibrate`: the input scenario with [convergence] a, v fitted\n"
        f"from rounds-to-target{target} of fixed_steps runs at n = "
        f"{', '.join(str(n) for n in fit.num_steps)} local steps\n"
        f"(rounds {', '.join(f'{r:g}' for r in fit.rounds)}; fit rmse {fit.rmse:.4g} rounds)."
    )
    text = dumps_toml(data, comment)
    from_dict(tomllib.loads(text))  # the file must load as a valid scenario
    out = Path(path)
    out.write_text(text, encoding="utf-8")
    return out


def run_calibration(
    base: ScenarioConfig,
    steps: Sequence[int],
    max_rounds: int,
    target_loss: float,
    out_dir: Path,
    on_run: Callable[[int, Path], None] | None = None,
) -> tuple[list[CalibrationPoint], list[tuple[int, Any]]]:
    """One real fixed_steps run per step count, under OUT/steps_<n>.

    Returns the points and the failures [(n, RoleFailed)]; the caller stops on failures.
    """
    from fedsllm.launch import make_run_dir, run_processes
    from fedsllm.trace import read_telemetry

    points: list[CalibrationPoint] = []
    failures: list[tuple[int, Any]] = []
    for n in steps:
        scenario = calibration_scenario(base, n, max_rounds, target_loss)
        run_dir = make_run_dir(out_dir / f"steps_{n}", scenario)
        if on_run is not None:
            on_run(n, run_dir)
        outcome = run_processes(scenario, run_dir)
        if outcome.failed is not None:
            failures.append((n, outcome.failed))
            break
        records = read_telemetry(run_dir / "trace")
        point = point_from_records(n, records, target_loss, str(run_dir))
        log.info("calibrate: n=%d -> rounds %s", n, point.rounds)
        points.append(point)
    return points, failures


def calibration_doc(
    base: ScenarioConfig,
    points: Sequence[CalibrationPoint],
    result: CalibrationFit | None,
    target_loss: float,
    max_rounds: int,
    written: str = "",
) -> dict[str, Any]:
    """What OUT/calibrate.json holds (NaN written as null).

    `fit` is present only when it was usable (and so written); the diagnostics
    are kept either way, to show why a fit was refused.
    """

    from fedsllm.summary import json_clean

    return json_clean(
        {
            "format": "fedsllm.calibrate/1",
            "target_val_loss": target_loss,
            "max_rounds": max_rounds,
            "model": "rounds(n) = a / (1 - 2^(-n/v))",
            "points": [p.to_dict() for p in points],
            "fit": result.fit.to_dict() if result is not None and result.usable else None,
            "diagnostics": result.to_dict() if result is not None else None,
            "written": written,
            "scenario": base.to_dict(),
        }
    )


def dump_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8")
