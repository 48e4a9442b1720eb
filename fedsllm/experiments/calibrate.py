"""Fit the convergence constants a and v (docs/MODEL.md section 4) from short real runs.

docs/MODEL.md models rounds-to-target as N = a / (1 - eta) with the local accuracy
eta reached by n = v * log2(1/eta) local iterations, i.e. for a run with n
local steps per round

    eta(n)    = 2^(-n/v)
    rounds(n) = a / (1 - 2^(-n/v))

For an LLM a and v have no closed form, so they are measured: one
fixed_steps run per candidate n, each counting the global rounds until the
validation loss first reaches the target. `fit_convergence` is the pure
least-squares fit of those points; `calibration_scenarios` builds the runs;
`run_calibration` executes them through fedsllm.launch. Writing the
calibrated scenario file is fedsllm.experiments.scenario_toml's job, the CLI
is fedsllm.cli.calibrate's.
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

log = logging.getLogger(__name__)

MIN_POINTS = 2
"""Distinct step counts that must reach the target for a fit of two constants."""
V_BOUNDS = (1e-3, 1e4)
"""Search range of v (local iterations per halving of eta)."""
A_MIN = 1e-6
"""a must stay positive (N(eta) > 0)."""


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
    costs = []
    for v in grid:
        x = x_of(v)
        a = _best_a(x, y)
        costs.append(float(((a * x - y) ** 2).sum()))
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def point_from_records(
    num_steps: int, records: list[dict[str, Any]], target_loss: float, run_dir: str
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
    return CalibrationPoint(
        num_steps=num_steps,
        rounds=rounds,
        run_dir=run_dir,
        initial_val_loss=initial,
        final_val_loss=final_val_loss(val),
        best_val_loss=min(after.values()) if after else math.nan,
        note=note,
    )


def fit_points(
    points: Sequence[CalibrationPoint], target_loss: float, max_rounds: int
) -> ConvergenceFit:
    """Fit the points that reached the target; ConfigError (exit 2) when fewer than two did."""
    used = [p for p in points if p.rounds is not None]
    if len(used) < MIN_POINTS:
        reached = ", ".join(f"n={p.num_steps}" for p in used) or "none"
        raise ConfigError(
            "--target-loss",
            target_loss,
            f"only {len(used)} of {len(points)} runs reached it within {max_rounds} rounds "
            f"(reached: {reached}); need >= {MIN_POINTS}: raise the target loss or --max-rounds",
        )
    return fit_convergence([p.num_steps for p in used], [float(p.rounds or 0) for p in used])


def calibrated_dict(base: ScenarioConfig, fit: ConvergenceFit) -> dict[str, Any]:
    """The input scenario as a dict with [convergence] a, v replaced by the fit."""
    data = base.to_dict()
    data["convergence"] = {**data["convergence"], "a": fit.a, "v": fit.v}
    return data


def write_calibrated(path: str | Path, base: ScenarioConfig, fit: ConvergenceFit) -> Path:
    """Write the calibrated scenario TOML, checked to load back to the same scenario."""
    import tomllib

    from fedsllm.config import from_dict
    from fedsllm.experiments.scenario_toml import dumps_toml

    data = calibrated_dict(base, fit)
    comment = (
        "Written by `fedsllm calibrate`: the input scenario with [convergence] a, v fitted\n"
        f"from rounds-to-target of fixed_steps runs at n = "
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
    from fedsllm.trace import read_records

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
        records = read_records(run_dir / "trace")
        point = point_from_records(n, records, target_loss, str(run_dir))
        log.info("calibrate: n=%d -> rounds %s", n, point.rounds)
        points.append(point)
    return points, failures


def calibration_doc(
    base: ScenarioConfig,
    points: Sequence[CalibrationPoint],
    fit: ConvergenceFit | None,
    target_loss: float,
    max_rounds: int,
    written: str = "",
) -> dict[str, Any]:
    """What OUT/calibrate.json holds (NaN written as null)."""

    from fedsllm.summary import json_clean

    return json_clean(
        {
            "format": "fedsllm.calibrate/1",
            "target_val_loss": target_loss,
            "max_rounds": max_rounds,
            "model": "rounds(n) = a / (1 - 2^(-n/v))",
            "points": [p.to_dict() for p in points],
            "fit": fit.to_dict() if fit is not None else None,
            "written": written,
            "scenario": base.to_dict(),
        }
    )


def dump_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8")
