"""Parameter sweeps of the delay model (docs/MODEL.md section 5): delay per policy against a knob.

Each point varies one scenario parameter, averages random placements over a
few seeds, and records every policy's mean delay, its verdict against the
optimum (fedsllm.delay.policies.judge_delay on the mean delays: ok, absurd
or infeasible) and the optimum's reduction against the unoptimized case
(equal shares, fixed eta), the figure the paper reports as 47.63% on
average. Pure: takes a scenario dict, returns rows; files and plots are
fedsllm.cli.sweep's job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsllm.errors import ConfigError

SWEEP_PARAMS: dict[str, tuple[str | None, float]] = {
    "num_clients": ("clients.num_clients", 1.0),
    "bandwidth_mhz": ("channel.bandwidth_hz", 1e6),
    "tx_power_dbm": ("channel.tx_power_dbm", 1.0),
    "cell_radius_m": ("channel.cell_radius_m", 1.0),
    "smashed_scale": (None, 1.0),
}
"""Sweepable parameter -> (scenario field, unit factor). smashed_scale multiplies
the uplink bits per iteration (beta*s) counted from the model."""

SWEEP_POLICIES = ("optimal", "equal", "equal_opt_eta", "opt_fixed_eta", "proportional", "random")

PAPER_SWEEPS: dict[str, tuple[float, ...]] = {
    "num_clients": (2, 5, 10, 20, 50),
    "bandwidth_mhz": (5, 10, 20, 40),
    "tx_power_dbm": (0, 5, 10, 15, 20),
    "cell_radius_m": (100, 250, 500, 750, 1000),
    "smashed_scale": (0.25, 0.5, 1, 2, 4),
}
"""The standard set of `fedsllm sweep --paper` (base: the scenario with 10 clients)."""
PAPER_BASE_CLIENTS = 10


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """Mean delays of every policy at one parameter value, over `num_seeds` placements."""

    param: str
    value: float
    num_seeds: int
    mean_delay_s: dict[str, float]
    """inf for a policy infeasible at some seed."""
    mean_eta: dict[str, float]
    """NaN for a policy infeasible at some seed."""
    reduction: float
    """1 - mean T(optimal) / mean T(equal): the optimum's fraction less delay than equal."""
    per_seed_reduction: list[float] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    """Per policy: ok, absurd or infeasible (fedsllm.delay.policies.judge_delay)."""
    delay_ratio: dict[str, float] = field(default_factory=dict)
    """Per policy: mean T / mean T(optimal); inf when infeasible."""

    def label(self, policy: str) -> str:
        """The flag a report prints for `policy` here ("" when ok)."""
        from fedsllm.delay.policies import verdict_label

        return verdict_label(self.status.get(policy, "ok"), self.delay_ratio.get(policy, 1.0))


def check_param(param: str) -> None:
    if param not in SWEEP_PARAMS:
        raise ConfigError("--param", param, f"must be one of {', '.join(SWEEP_PARAMS)}")


def sweep(
    base: dict[str, Any],
    param: str,
    values: Sequence[float],
    num_seeds: int = 3,
    solver: str = "exact",
    policies: Sequence[str] = SWEEP_POLICIES,
) -> list[SweepPoint]:
    """Delay of each policy at each value of `param`, seeds base seed .. base seed + num_seeds-1.

    `base` is a scenario dict (load_dict + overrides); each point is
    validated as a ScenarioConfig, so a bad value raises ConfigError naming
    --values and the field it set.
    """
    from fedsllm.config import apply_overrides, from_dict
    from fedsllm.delay.inputs import delay_inputs
    from fedsllm.delay.policies import STATUS_INFEASIBLE, judge_delay, solve_policy
    from fedsllm.errors import AllocationError
    from fedsllm.model.counts import count_scenario

    check_param(param)
    if num_seeds < 1:
        raise ConfigError("--seeds", num_seeds, "must be >= 1")
    if "optimal" not in policies or "equal" not in policies:
        raise ConfigError("policies", list(policies), "must include optimal and equal")
    if param == "num_clients":
        fractional = [v for v in values if float(v) != int(v)]
        if fractional:  # rounded, it would be swept as another K under its own label
            raise ConfigError("--values", fractional[0], "num_clients takes whole numbers")
    path, factor = SWEEP_PARAMS[param]
    base_seed = int(base.get("seed", 0))
    # No swept parameter touches the model, split, adapter or sequence: count once.
    counts = count_scenario(from_dict(base))
    points = []
    for value in values:
        overrides = []
        if path is not None:
            scaled = value * factor
            overrides.append(
                f"{path}={int(round(scaled)) if param == 'num_clients' else float(scaled)!r}"
            )
        totals: dict[str, list[float]] = {p: [] for p in policies}
        etas: dict[str, list[float]] = {p: [] for p in policies}
        for i in range(num_seeds):
            data = apply_overrides(base, [*overrides, f"seed={base_seed + i}"])
            try:
                scenario = from_dict(data)
            except ConfigError as err:  # the base is valid (counted above): the value is not
                raise ConfigError(
                    "--values", value, f"{param} {value:g} gives {err.path}: {err.reason}"
                ) from None
            inputs = delay_inputs(scenario, 0, counts)
            if path is None:
                inputs = inputs.replace(bits_per_iter=inputs.bits_per_iter * value)
            pol = scenario.policy
            for name in policies:
                try:
                    alloc = solve_policy(
                        inputs,
                        name,
                        solver,
                        pol.fixed_eta,
                        None,
                        pol.num_random_draws,
                        scenario.seed,
                    )
                except AllocationError as err:
                    # A baseline that cannot finish a round is a result; the optimum's is not.
                    if name == "optimal" or err.status != STATUS_INFEASIBLE:
                        raise
                    totals[name].append(math.inf)
                    etas[name].append(math.nan)
                    continue
                totals[name].append(alloc.total_delay_s)
                etas[name].append(alloc.eta)
        mean = {p: float(np.mean(v)) for p, v in totals.items()}
        t_opt = mean["optimal"]
        points.append(
            SweepPoint(
                param=param,
                value=float(value),
                num_seeds=num_seeds,
                mean_delay_s=mean,
                mean_eta={p: float(np.mean(v)) for p, v in etas.items()},
                reduction=1.0 - t_opt / mean["equal"],
                per_seed_reduction=[
                    1.0 - o / e for o, e in zip(totals["optimal"], totals["equal"], strict=True)
                ],
                status={p: judge_delay(t, t_opt) for p, t in mean.items()},
                delay_ratio={p: t / t_opt for p, t in mean.items()},
            )
        )
    return points


def average_reduction(points: Sequence[SweepPoint]) -> float:
    """Mean over points of the per-point reduction of the optimum against equal.

    Points where equal itself is flagged (absurd or infeasible) are left out:
    a reduction near 100% there would be a starved client's, not the
    allocation's. NaN when no point is left.
    """
    kept = [p.reduction for p in points if p.status.get("equal", "ok") == "ok"]
    return float(np.mean(kept)) if kept else math.nan
