"""Every allocation policy of MODEL.md section 5 behind one function, `solve_policy`.

The optimum and its baselines are computed on the same DelayInputs so that
reports can set them side by side; the solving itself is in
fedsllm.delay.solvers. Pure: the random baseline takes its seed as an
argument and reading a shares file is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsllm.delay.inputs import DelayInputs
from fedsllm.delay.solvers import Allocation, shares_allocation, solve_allocation
from fedsllm.errors import ConfigError

POLICY_NAMES = (
    "optimal",
    "equal",
    "equal_opt_eta",
    "opt_fixed_eta",
    "proportional",
    "random",
    "fixed",
)
"""config.POLICIES without fixed_steps (which runs without a controller)."""

_RANDOM_STREAM = 11


def _fixed_shares(inputs: DelayInputs, fractions: Sequence[float] | None) -> np.ndarray:
    if fractions is None:
        raise ConfigError("policy.shares_file", None, "policy fixed needs a list of shares")
    arr = np.asarray(list(fractions), dtype=float).reshape(-1)
    if arr.size != inputs.num_clients:
        raise ConfigError(
            "policy.shares_file", arr.size, f"must list one share per client ({inputs.num_clients})"
        )
    for i, x in enumerate(arr):
        if not (np.isfinite(x) and x > 0):
            raise ConfigError(f"policy.shares_file[{i}]", float(x), "must be > 0")
    return arr / arr.sum() * inputs.bandwidth_hz


def solve_policy(
    inputs: DelayInputs,
    policy_name: str,
    solver: str = "exact",
    fixed_eta: float = 0.5,
    shares: Sequence[float] | None = None,
    num_random_draws: int = 20,
    seed: int = 0,
    optimize_eta_for_fixed_shares: bool = True,
    min_local_iterations: float = 1.0,
) -> Allocation:
    """The allocation of one policy (MODEL.md section 5).

    - optimal: optimal shares and eta (`solver`: exact or cvxpy);
    - equal: b_k = B/K at `fixed_eta` (the unoptimized case);
    - equal_opt_eta: b_k = B/K, eta optimized;
    - opt_fixed_eta: optimal shares at `fixed_eta`;
    - proportional: b_k proportional to g_k;
    - random: Dirichlet(1) shares, `num_random_draws` draws seeded by `seed`,
      delay averaged over the draws (one eta for all);
    - fixed: `shares` (fractions, normalized to B).
    For proportional, random and fixed, eta is optimized for the given shares
    unless `optimize_eta_for_fixed_shares` is False (then `fixed_eta`), so
    that they differ from the optimum in the shares alone.
    """
    if policy_name == "optimal":
        return solve_allocation(inputs, solver, None, "optimal", min_local_iterations)
    if policy_name == "opt_fixed_eta":
        return solve_allocation(inputs, solver, fixed_eta, "opt_fixed_eta")
    k = inputs.num_clients
    total = inputs.bandwidth_hz
    share_eta = None if optimize_eta_for_fixed_shares else fixed_eta
    if policy_name == "equal":
        return shares_allocation(inputs, np.full(k, total / k), "equal", fixed_eta)
    if policy_name == "equal_opt_eta":
        return shares_allocation(
            inputs, np.full(k, total / k), "equal_opt_eta", None, min_local_iterations
        )
    if policy_name == "proportional":
        if not np.all(inputs.gain > 0):
            raise ConfigError(
                "DelayInputs.gain", inputs.gain.min(), "proportional shares need every gain > 0"
            )
        return shares_allocation(
            inputs,
            inputs.gain / inputs.gain.sum() * total,
            "proportional",
            share_eta,
            min_local_iterations,
        )
    if policy_name == "random":
        if num_random_draws < 1:
            raise ConfigError("policy.num_random_draws", num_random_draws, "must be >= 1")
        rng = np.random.default_rng([seed, _RANDOM_STREAM])
        draws = rng.dirichlet(np.ones(k), size=num_random_draws) * total
        return shares_allocation(inputs, draws, "random", share_eta, min_local_iterations)
    if policy_name == "fixed":
        return shares_allocation(
            inputs, _fixed_shares(inputs, shares), "fixed", share_eta, min_local_iterations
        )
    raise ConfigError("policy.name", policy_name, f"must be one of {', '.join(POLICY_NAMES)}")


def solve_policies(
    inputs: DelayInputs,
    solver: str = "exact",
    fixed_eta: float = 0.5,
    shares: Sequence[float] | None = None,
    num_random_draws: int = 20,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> dict[str, Allocation]:
    """Every policy in `names` (default: all, fixed only when `shares` is given)."""
    if names is None:
        names = [p for p in POLICY_NAMES if p != "fixed" or shares is not None]
    return {
        name: solve_policy(inputs, name, solver, fixed_eta, shares, num_random_draws, seed)
        for name in names
    }


def reduction(allocation: Allocation, baseline: Allocation) -> float:
    """1 - T / T_baseline: the delay cut the paper reports against the unoptimized case."""
    return 1.0 - allocation.total_delay_s / baseline.total_delay_s
