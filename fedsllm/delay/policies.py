"""Every allocation policy of docs/MODEL.md section 5 behind one function, `solve_policy`.

The optimum and its baselines are computed on the same DelayInputs so that
reports can set them side by side; the solving itself is in
fedsllm.delay.solvers. `policy_shares` is the one definition of the shares
of the policies that do not optimize bandwidth (equal, proportional, random,
fixed): `fedsllm plan` and the allocation controller both take them from
here, so what the plan reports is what a run gets. `read_shares_file` is
the one reader of policy fixed's file. Random draws take their seed and
round as arguments: nothing here keeps state.

`judge_delay` is the one place that decides whether a baseline is worth
comparing in percent (`judge` applies it to a plan's policies, the sweeps to
their mean delays): a baseline more than ABSURD_FACTOR times slower than the
optimum is "absurd", one that cannot finish a round is "infeasible". `fedsllm plan`
and `fedsllm sweep` print those words instead of a percentage that would
otherwise read -1012232% (proportional at K = 200: the weakest client gets
a few millionths of the band, docs/MODEL.md section 2's rate collapses
with it, and its round sets everyone's).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsllm.delay.inputs import DelayInputs
from fedsllm.delay.solvers import Allocation, shares_allocation, solve_allocation
from fedsllm.errors import NO_VALUE, AllocationError, ConfigError

if TYPE_CHECKING:
    from fedsllm.config import ScenarioConfig

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

GIVEN_SHARE_POLICIES = ("equal", "equal_opt_eta", "proportional", "random", "fixed")
"""Policies whose shares `policy_shares` gives (the others optimize them)."""

RANDOM_STREAM = 7
"""numpy stream id of policy random's Dirichlet draws, apart from the channel's streams."""
PLAN_ROUND = -1
"""Round slot of a plan's averaged random draws, so that they never repeat a round's draw."""
DIRICHLET_ALPHA = 1.0
"""Concentration of policy random's shares: uniform over the simplex."""
SHARES_SUM_RTOL = 1e-9
"""Slack on sum(fractions) <= 1 for policy fixed."""

ABSURD_FACTOR = 10.0
"""A baseline whose delay T exceeds the optimum's by more than this factor is "absurd".

One order of magnitude: the paper's unoptimized case (equal) sits within
about 2x of the optimum (its 47.63% average reduction), and the one-knob
baselines closer still, so past 10x a baseline is not a competitor the
optimum beats but an allocation that starves a client (proportional gives
the weakest channel a share ~ g_min / sum g, 1e-6 of B with the default
placement; Dirichlet draws at large K do it by chance). A percentage there
only says "about 100%" or, against equal, "-1012232%": both hide what
happened, so such a baseline is named, with its factor, instead.
"""

STATUS_OK = "ok"
STATUS_ABSURD = "absurd"
STATUS_INFEASIBLE = "infeasible"
VERDICTS = (STATUS_OK, STATUS_ABSURD, STATUS_INFEASIBLE)
"""What `judge` says of a policy against the optimum."""


def check_fractions(fractions: Sequence[float] | np.ndarray | None, num_clients: int) -> np.ndarray:
    """Policy fixed's bandwidth fractions, checked: K finite numbers > 0 summing to <= 1.

    The convention: b_k = fraction_k * B as given, never rescaled. Fractions
    summing below 1 leave the rest of the band unused, which is what a user
    who writes them means (the run then shows what that spare band costs).
    """
    field = "policy.shares_file"
    if fractions is None:
        raise ConfigError(field, NO_VALUE, "policy fixed needs a list of shares")
    values = list(fractions)
    if len(values) != num_clients:
        raise ConfigError(
            field, values, f"must list clients.num_clients={num_clients} fractions, one per client"
        )
    for i, frac in enumerate(values):
        ok = isinstance(frac, int | float | np.floating | np.integer) and not isinstance(frac, bool)
        if not (ok and math.isfinite(frac) and frac > 0):
            raise ConfigError(f"{field}[{i}]", frac, "must be a finite number > 0")
    arr = np.asarray(values, dtype=float)
    if arr.sum() > 1.0 + SHARES_SUM_RTOL:
        raise ConfigError(field, values, f"fractions must sum to <= 1, got {arr.sum():.6g}")
    return arr


def read_shares_file(path: str | Path, num_clients: int) -> np.ndarray:
    """Policy fixed's fractions from a JSON list of K numbers > 0 summing to <= 1."""
    field = "policy.shares_file"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(field, str(path), "file not found") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(field, str(path), f"not a readable JSON file ({err})") from None
    if not isinstance(data, list):
        raise ConfigError(field, data, "must hold a JSON list of numbers")
    return check_fractions(data, num_clients)


def fixed_fractions(scenario: ScenarioConfig) -> np.ndarray | None:
    """Policy fixed's fractions of `scenario`, read from its file and checked;
    None under every other policy."""
    if scenario.policy.name != "fixed":
        return None
    return read_shares_file(scenario.policy.shares_file, scenario.clients.num_clients)


def check_plannable(scenario: ScenarioConfig) -> None:
    """ConfigError for what the allocation controller refuses when it starts
    (the delay model's inputs, policy fixed's file), so that a launcher
    refuses it before any role starts rather than after the fed server died
    with it. Policy fixed_steps plans nothing and runs without a controller."""
    if scenario.policy.name == "fixed_steps":
        return
    from fedsllm.delay.inputs import delay_inputs

    delay_inputs(scenario)
    fixed_fractions(scenario)


def random_fractions(
    seed: int, round_index: int, num_clients: int, num_draws: int = 1
) -> np.ndarray:
    """Policy random's fractions, (num_draws, K): Dirichlet(1), deterministic in (seed, round)."""
    rng = np.random.default_rng([seed, RANDOM_STREAM, round_index + 1])
    return rng.dirichlet(np.full(num_clients, DIRICHLET_ALPHA), size=num_draws)


def policy_shares(
    policy_name: str,
    inputs: DelayInputs,
    seed: int = 0,
    round_index: int = PLAN_ROUND,
    fractions: Sequence[float] | np.ndarray | None = None,
    num_draws: int = 1,
) -> np.ndarray:
    """Bandwidth shares (Hz) of a policy that does not optimize them, for one round.

    - equal, equal_opt_eta: B / K each;
    - proportional: B g_k / sum g;
    - random: Dirichlet(1) fractions of B drawn for (`seed`, `round_index`);
      with `num_draws` > 1 the result is (num_draws, K), the draws a plan
      averages (round_index PLAN_ROUND);
    - fixed: `fractions` * B as given (`check_fractions`: unused band stays unused).
    Returns (K,) otherwise. Raises ConfigError for another policy or bad
    fractions, AllocationError when proportional shares meet a zero gain.
    """
    k = inputs.num_clients
    total = inputs.bandwidth_hz
    if policy_name in ("equal", "equal_opt_eta"):
        return np.full(k, total / k)
    if policy_name == "proportional":
        gains = np.asarray(inputs.gain, dtype=float)
        if not np.all(gains > 0):
            i = int(np.flatnonzero(~(gains > 0))[0])
            raise AllocationError(
                f"client {i} has channel gain {gains[i]!r}: proportional shares need every "
                "gain > 0",
                status="infeasible",
            )
        return total * gains / gains.sum()
    if policy_name == "random":
        if num_draws < 1:
            raise ConfigError("policy.num_random_draws", num_draws, "must be >= 1")
        draws = total * random_fractions(seed, round_index, k, num_draws)
        return draws if num_draws > 1 else draws[0]
    if policy_name == "fixed":
        return total * check_fractions(fractions, k)
    raise ConfigError(
        "policy.name", policy_name, f"has no given shares: one of {', '.join(GIVEN_SHARE_POLICIES)}"
    )


def solve_policy(
    inputs: DelayInputs,
    policy_name: str,
    solver: str = "exact",
    fixed_eta: float = 0.5,
    fractions: Sequence[float] | np.ndarray | None = None,
    num_random_draws: int = 20,
    seed: int = 0,
    optimize_eta_for_fixed_shares: bool = True,
    min_local_iterations: float = 1.0,
    round_index: int = PLAN_ROUND,
) -> Allocation:
    """The allocation of one policy (docs/MODEL.md section 5).

    - optimal: optimal shares and eta (`solver`: exact or cvxpy);
    - equal: b_k = B/K at `fixed_eta` (the unoptimized case);
    - equal_opt_eta: b_k = B/K, eta optimized;
    - opt_fixed_eta: optimal shares at `fixed_eta`;
    - proportional: b_k proportional to g_k, as docs/MODEL.md section 5
      defines it (more band to the stronger channel: with gains spread over
      60 dB the weakest client gets ~1e-6 of B, so `judge` usually calls it
      absurd; that is the baseline's nature, not a bug);
    - random: `num_random_draws` Dirichlet(1) draws for (`seed`, `round_index`),
      delay averaged over the draws (one eta for all);
    - fixed: `fractions` of B, as given (see `check_fractions`).
    The given shares are `policy_shares`'. For proportional, random and
    fixed, eta is optimized for the given shares unless
    `optimize_eta_for_fixed_shares` is False (then `fixed_eta`), so that they
    differ from the optimum in the shares alone.
    """
    if policy_name == "optimal":
        return solve_allocation(inputs, solver, None, "optimal", min_local_iterations)
    if policy_name == "opt_fixed_eta":
        return solve_allocation(inputs, solver, fixed_eta, "opt_fixed_eta")
    if policy_name not in GIVEN_SHARE_POLICIES:
        raise ConfigError("policy.name", policy_name, f"must be one of {', '.join(POLICY_NAMES)}")
    shares = policy_shares(
        policy_name, inputs, seed, round_index, fractions, num_draws=num_random_draws
    )
    if policy_name == "equal":
        return shares_allocation(inputs, shares, "equal", fixed_eta)
    share_eta = None
    if policy_name != "equal_opt_eta" and not optimize_eta_for_fixed_shares:
        share_eta = fixed_eta
    return shares_allocation(inputs, shares, policy_name, share_eta, min_local_iterations)


def solve_policies(
    inputs: DelayInputs,
    solver: str = "exact",
    fixed_eta: float = 0.5,
    fractions: Sequence[float] | np.ndarray | None = None,
    num_random_draws: int = 20,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> dict[str, Allocation]:
    """Every policy in `names` (default: all, fixed only when `fractions` is given)."""
    if names is None:
        names = [p for p in POLICY_NAMES if p != "fixed" or fractions is not None]
    return {
        name: solve_policy(inputs, name, solver, fixed_eta, fractions, num_random_draws, seed)
        for name in names
    }


def reduction(allocation: Allocation, baseline: Allocation) -> float:
    """1 - T / T_baseline: `allocation` takes this fraction less delay than `baseline`.

    The paper's figure (optimal against equal, 47.63% on average). Positive
    when `allocation` is faster; against a baseline `judge` calls absurd it is
    a number close to 1 that says nothing, so reports print the verdict.
    """
    return 1.0 - allocation.total_delay_s / baseline.total_delay_s


def judge_delay(delay_s: float, optimal_delay_s: float) -> str:
    """The one criterion: infeasible if T is not a finite positive time, absurd if
    T > ABSURD_FACTOR * T_optimal, ok otherwise. Sweeps apply it to mean delays."""
    if not (math.isfinite(delay_s) and delay_s > 0):
        return STATUS_INFEASIBLE
    if delay_s > ABSURD_FACTOR * optimal_delay_s:
        return STATUS_ABSURD
    return STATUS_OK


def format_factor(ratio: float) -> str:
    """T / T_optimal as a reader wants it: x20220, x12, x3.4e+07."""
    return f"x{ratio:.0f}" if ratio < 1e6 else f"x{ratio:.2g}"


def verdict_label(status: str, ratio: float) -> str:
    """What a table or CSV prints for a flagged policy ("" for ok)."""
    if status == STATUS_ABSURD:
        return f"absurd ({format_factor(ratio)} the optimum)"
    if status == STATUS_INFEASIBLE:
        return "infeasible"
    return ""


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """One policy's allocation and `judge`'s verdict on it against the optimum."""

    policy: str
    allocation: Allocation | None
    """None when the policy is infeasible (some client never finishes a round)."""
    status: str
    """ok, absurd or infeasible (VERDICTS)."""
    delay_ratio: float
    """T / T_optimal; inf when infeasible."""
    reason: str
    """Why it is flagged: the starved client, or the solver's message; "" when ok."""

    @property
    def label(self) -> str:
        """The flag to print: absurd (x20220 the optimum), infeasible, or "" when ok."""
        return verdict_label(self.status, self.delay_ratio)

    @property
    def optimal_less_delay(self) -> float | None:
        """1 - T_optimal / T: the optimum takes this fraction less delay; None when flagged."""
        if self.status != STATUS_OK:
            return None
        return 1.0 - 1.0 / self.delay_ratio


def judge(
    policy: str,
    allocation: Allocation | AllocationError,
    optimum: Allocation,
    bandwidth_hz: float,
) -> PolicyResult:
    """`judge_delay` on one policy's result, or on the infeasibility it raised, with a reason.

    The reason of an absurd verdict names the slowest client (the one whose
    round sets T, docs/MODEL.md section 3), its share of B and its rate: a
    starved client is what makes a baseline absurd.
    """
    if isinstance(allocation, AllocationError):
        return PolicyResult(policy, None, STATUS_INFEASIBLE, math.inf, str(allocation))
    ratio = allocation.total_delay_s / optimum.total_delay_s
    status = judge_delay(allocation.total_delay_s, optimum.total_delay_s)
    reason = ""
    if status == STATUS_INFEASIBLE:
        reason = f"delay {allocation.total_delay_s!r} s"
    elif status == STATUS_ABSURD:
        rounds = np.asarray(allocation.client_round_s, dtype=float)
        k = int(np.argmax(rounds))
        share = float(allocation.bandwidth_hz[k]) / bandwidth_hz
        reason = (
            f"client {k} gets {share:.3g} of the band ({float(allocation.rate_bps[k]):.4g} "
            f"bit/s); its round takes {float(rounds[k]):.4g} s, the median client's "
            f"{float(np.median(rounds)):.4g} s"
        )
    if status == STATUS_INFEASIBLE:
        return PolicyResult(policy, None, status, math.inf, reason)
    return PolicyResult(policy, allocation, status, ratio, reason)


def compare_policies(
    inputs: DelayInputs,
    solver: str = "exact",
    fixed_eta: float = 0.5,
    fractions: Sequence[float] | np.ndarray | None = None,
    num_random_draws: int = 20,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> dict[str, PolicyResult]:
    """`solve_policies` with every policy judged against the optimum (`judge`).

    The optimum is solved first and its failure raises; a baseline that is
    infeasible (AllocationError with status infeasible) is reported as such
    instead of aborting the comparison. Other solver failures raise.
    """
    if names is None:
        names = [p for p in POLICY_NAMES if p != "fixed" or fractions is not None]
    optimum = solve_policy(inputs, "optimal", solver, fixed_eta)
    out: dict[str, PolicyResult] = {}
    for name in names:
        alloc: Allocation | AllocationError
        if name == "optimal":
            alloc = optimum
        else:
            try:
                alloc = solve_policy(
                    inputs, name, solver, fixed_eta, fractions, num_random_draws, seed
                )
            except AllocationError as err:
                if err.status != STATUS_INFEASIBLE:
                    raise
                alloc = err
        out[name] = judge(name, alloc, optimum, inputs.bandwidth_hz)
    return out
