"""The allocation controller's logic: plan the run, re-solve shares per round, publish.

At construction the controller solves the run's plan from the scenario alone
with the configured policy (docs/MODEL.md section 5): the accuracy eta, the
integer local iterations n_int and the integer global rounds N. The plan is
fixed for the whole run. Every later solve (a new round's Rayleigh fading, a
client registering its own profile, a reported channel) only re-optimizes
the bandwidth shares at that fixed n_int, docs/MODEL.md's inner problem, and
publishes one `AllocationInfo` per client under a new version. Subscribers
block in `wait_update` until a version newer than theirs exists.

Every request is validated completely before any state changes, and a
failed solve restores the state as it was, so a refused request or an
infeasible problem leaves the controller exactly as it was (the previous
allocation stays in force). The gRPC edge lives in
fed_server/controller_service.py; the delay model and the solvers live in
fedsllm.delay.

Registered and reported values map onto the scenario's `ClientProfile`
overrides, so the channel model treats them exactly as a scenario file's:
`distance_m` > 0 replaces the random placement (shadowing stays), a
`gain_db` replaces path loss and shadowing, and the scenario's per-round
fading still applies on top. Because proto3 cannot send NaN, `gain_db` = 0
and `distance_m` = 0 (the proto defaults) mean "not reported": the scenario's
value stands (no real link has a 0 dB gain).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsllm.config import ClientProfile, ScenarioConfig
from fedsllm.delay.policies import PLAN_ROUND, POLICY_NAMES, fixed_fractions, policy_shares
from fedsllm.errors import AllocationError, ConfigError, StateError, WireError
from fedsllm.trace import Tracer
from fedsllm.wire.messages import (
    AllocationInfo,
    ChannelReportInfo,
    RegisterInfo,
    RegisterReplyInfo,
)
from fedsllm.words import counted

if TYPE_CHECKING:
    from fedsllm.delay.inputs import DelayInputs
    from fedsllm.delay.solvers import Allocation, CvxpyInner
    from fedsllm.model.counts import ModelCounts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """The run's training plan: fixed at construction, the same for every round.

    `predicted_round_s` is the model's round time with n_int local
    iterations and the plan's shares at round 0; `predicted_total_s` is
    num_rounds times it (integer n and N, what a real run does).
    """

    policy: str
    eta: float
    num_local_steps: int
    num_rounds: int
    predicted_total_s: float
    predicted_round_s: float


@dataclass(frozen=True, slots=True)
class ControllerSnapshot:
    """A copy of the observable state, for callers and tests that check nothing changed."""

    round: int
    """Current round; -1 before the first start_round."""
    version: int
    """Version of the allocations in force; 0 before the first publication."""
    registered: dict[int, RegisterInfo]
    channels: dict[int, ChannelReportInfo]
    allocations: tuple[AllocationInfo, ...]
    closed: bool


def _same_allocations(new: tuple[AllocationInfo, ...], current: tuple[AllocationInfo, ...]) -> bool:
    """Whether `new` allocates exactly what `current` does (version and issue time
    aside): the solver is deterministic, so equal inputs give equal floats."""

    def what(info: AllocationInfo) -> AllocationInfo:
        return dataclasses.replace(info, version=0, issued_unix_s=0.0)

    return len(new) == len(current) and all(
        what(a) == what(b) for a, b in zip(new, current, strict=True)
    )


def _check_finite(field: str, value: float, minimum: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" and >= {minimum:g}"
        raise WireError(field, f"={value!r}, must be finite{bound}")
    return float(value)


class Controller:
    """Plans the run once, then publishes per-round bandwidth shares to every client.

    `counts` (fedsllm.model.counts.ModelCounts) defaults to counting the
    scenario's model; `clock` stamps `issued_unix_s`. Thread-safe: one lock
    serializes changes (and their solves), a condition guards what readers
    see, so subscribers are never blocked by a solve.
    """

    def __init__(
        self,
        scenario: ScenarioConfig,
        *,
        counts: ModelCounts | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        policy = scenario.policy
        if policy.name not in POLICY_NAMES:
            raise ConfigError(
                "policy.name",
                policy.name,
                f"the controller serves {', '.join(POLICY_NAMES)}; "
                "fixed_steps runs without a controller",
            )
        if counts is None:
            from fedsllm.model.counts import count_scenario

            counts = count_scenario(scenario)
        self.scenario = scenario
        self.counts = counts
        self.clock = clock
        self.tracer = tracer
        self.num_clients = scenario.clients.num_clients
        self._fixed_fractions = fixed_fractions(scenario)
        self._cvxpy: CvxpyInner | None = None  # one compiled cvxpy problem for every round
        self._change_lock = threading.Lock()
        self._cond = threading.Condition()
        self._registered: dict[int, RegisterInfo] = {}
        self._channels: dict[int, ChannelReportInfo] = {}
        self._round = -1
        self._version = 0
        self._allocations: tuple[AllocationInfo, ...] = ()
        self._closed = False
        self.on_change = on_change
        """Called with `state_dict()` after every change, under the change lock (the
        fed server saves it with FedServerStore.save_controller); an exception
        it raises propagates to the request that made the change."""
        plan_alloc = self._solve_plan(self._inputs(0, {}, {}))
        num_rounds = int(plan_alloc.num_rounds_int)
        if policy.max_rounds:
            num_rounds = min(num_rounds, policy.max_rounds)  # a shortened run of the plan
        self.plan = Plan(
            policy=policy.name,
            eta=float(plan_alloc.eta),
            num_local_steps=int(plan_alloc.n_int),
            num_rounds=num_rounds,
            predicted_round_s=float(plan_alloc.round_time_int_s),
            predicted_total_s=float(num_rounds * plan_alloc.round_time_int_s),
        )
        log.info(
            "controller: plan for policy %s: eta %.4f, %s x %s, "
            "predicted round %.3f s, total %.3f s",
            self.plan.policy,
            self.plan.eta,
            counted(self.plan.num_local_steps, "local step"),
            counted(self.plan.num_rounds, "round"),
            self.plan.predicted_round_s,
            self.plan.predicted_total_s,
        )
        if tracer is not None:
            t = tracer.now()
            tracer.record("event", "plan", t, t, client=-1, extra=dataclasses.asdict(self.plan))

    # ------------------------------------------------------------ solving

    def _inputs(
        self,
        round_index: int,
        registered: dict[int, RegisterInfo],
        channels: dict[int, ChannelReportInfo],
    ) -> DelayInputs:
        """Delay inputs of round `round_index` with registered and reported overrides."""
        from fedsllm.delay.inputs import delay_inputs

        scenario = self.scenario
        profiles = list(scenario.clients.profiles) or [ClientProfile()] * self.num_clients
        for k, reg in registered.items():
            changes: dict[str, float] = {"flops": reg.flops, "tx_power_dbm": reg.tx_power_dbm}
            if reg.distance_m > 0:
                changes["distance_m"] = reg.distance_m
            if reg.gain_db != 0:
                changes["gain_db"] = reg.gain_db
            profiles[k] = dataclasses.replace(profiles[k], **changes)
        for k, rep in channels.items():
            changes = {}
            if rep.distance_m > 0:
                changes["distance_m"] = rep.distance_m
            # A report replaces the client's channel: a bare distance drops an older gain.
            changes["gain_db"] = rep.gain_db if rep.gain_db != 0 else math.nan
            profiles[k] = dataclasses.replace(profiles[k], **changes)
        if registered or channels:
            clients = dataclasses.replace(scenario.clients, profiles=tuple(profiles))
            scenario = dataclasses.replace(scenario, clients=clients)
        inputs = delay_inputs(scenario, round_index, self.counts)
        if registered:
            sizes = np.array(inputs.data_sizes, dtype=float)
            for k, reg in registered.items():
                sizes[k] = reg.num_samples
            inputs = inputs.replace(data_sizes=sizes)
        return inputs

    def _solve_plan(self, inputs: DelayInputs) -> Allocation:
        """The run's plan. Policies that optimize eta search it over the values a
        real run can execute (integer n, N rounded up; fedsllm.delay.integer),
        so rounding never makes the plan worse than its continuous optimum."""
        from fedsllm.delay.integer import best_integer_iterations, eta_for_iterations
        from fedsllm.delay.rates import client_round_times
        from fedsllm.delay.solvers import exact_round_time, shares_allocation, solve_allocation

        policy = self.scenario.policy
        name = policy.name
        if name == "opt_fixed_eta":
            return solve_allocation(inputs, policy.solver, policy.fixed_eta, policy=name)
        if name == "equal":
            shares = self.given_shares(inputs, PLAN_ROUND)
            return shares_allocation(inputs, shares, name, eta=policy.fixed_eta)

        def best_eta(round_time: Callable[[int], float], hint: float) -> float:
            n = best_integer_iterations(round_time, inputs.a, inputs.v, hint)
            return eta_for_iterations(n, inputs.v)

        if name == "optimal":
            continuous = solve_allocation(inputs, "exact", None, policy=name)
            eta = best_eta(lambda n: exact_round_time(inputs, float(n))[0], continuous.n)
            return solve_allocation(inputs, policy.solver, eta, policy=name)
        # equal_opt_eta, proportional, fixed, random: given shares, the best eta for them.
        draws = np.atleast_2d(self.given_shares(inputs, PLAN_ROUND, policy.num_random_draws))
        continuous = shares_allocation(inputs, draws, name)

        def round_time(n: int) -> float:
            rounds = [np.max(client_round_times(inputs, d, float(n))) for d in draws]
            return float(np.mean(rounds))

        eta = best_eta(round_time, continuous.n)
        return shares_allocation(inputs, draws if name == "random" else draws[0], name, eta=eta)

    def given_shares(self, inputs: DelayInputs, round_index: int, num_draws: int = 1) -> np.ndarray:
        """Shares (Hz) of the policies that do not optimize bandwidth: `policy_shares`,
        the same function `fedsllm plan` reports, with this run's seed and fractions."""
        return policy_shares(
            self.scenario.policy.name,
            inputs,
            self.scenario.seed,
            round_index,
            self._fixed_fractions,
            num_draws,
        )

    def _inner_shares(self, inputs: DelayInputs) -> np.ndarray:
        """docs/MODEL.md section 5's inner problem at the plan's n_int: the min-max round shares.

        cvxpy keeps one compiled problem for the run (it depends on K alone).
        """
        from fedsllm.delay.solvers import CvxpyInner, exact_round_time

        n = float(self.plan.num_local_steps)
        if self.scenario.policy.solver != "cvxpy":
            return np.asarray(exact_round_time(inputs, n)[1], dtype=float)
        if self._cvxpy is None:
            self._cvxpy = CvxpyInner(inputs)
        else:
            self._cvxpy.set_inputs(inputs)
        return np.asarray(self._cvxpy.solve(n)[1], dtype=float)

    def solve_shares(self, inputs: DelayInputs, round_index: int) -> np.ndarray:
        """Bandwidth shares (Hz) of one round at the plan's fixed n_int and eta."""
        if self.scenario.policy.name in ("optimal", "opt_fixed_eta"):
            return self._inner_shares(inputs)
        return self.given_shares(inputs, round_index)

    def _build(
        self,
        round_index: int,
        registered: dict[int, RegisterInfo],
        channels: dict[int, ChannelReportInfo],
        version: int,
    ) -> tuple[AllocationInfo, ...]:
        """Solve round `round_index` and build one AllocationInfo per client (no state change)."""
        from fedsllm.delay.rates import predict_round_delay

        inputs = self._inputs(round_index, registered, channels)
        shares = self.solve_shares(inputs, round_index)
        breakdown = predict_round_delay(inputs, shares, self.plan.num_local_steps)
        rates = breakdown.rate_bps
        round_s = float(breakdown.round_time_s)
        issued = float(self.clock())
        total = inputs.bandwidth_hz
        return tuple(
            AllocationInfo(
                version=version,
                round=round_index,
                client_id=k,
                policy=self.plan.policy,
                bandwidth_hz=float(shares[k]),
                share=min(1.0, float(shares[k]) / total),
                uplink_bps=float(rates[k]),
                downlink_bps=float(self.scenario.channel.downlink_bps),
                num_local_steps=self.plan.num_local_steps,
                eta=self.plan.eta,
                predicted_round_s=round_s,
                predicted_total_s=self.plan.num_rounds * round_s,
                issued_unix_s=issued,
                num_rounds=self.plan.num_rounds,
            )
            for k in range(self.num_clients)
        )

    def _resolve_and_publish(
        self,
        round_index: int,
        registered: dict[int, RegisterInfo],
        channels: dict[int, ChannelReportInfo],
        reason: str,
    ) -> int:
        """Solve, then commit the new state and allocations together; on failure commit nothing.

        Called with the change lock held. Returns the version in force.
        """
        try:
            allocations = self._build(round_index, registered, channels, self._version + 1)
        except AllocationError as err:
            log.error(
                "controller: round %d: solve after %s failed (%s: %s); keeping allocation v%d",
                round_index,
                reason,
                err.status,
                err,
                self._version,
            )
            if self.tracer is not None:
                t = self.tracer.now()
                self.tracer.record(
                    "event",
                    "allocation_error",
                    t,
                    t,
                    round=round_index,
                    client=-1,
                    extra={"reason": reason, "status": err.status, "message": str(err)},
                )
            raise
        self._check_open()
        if _same_allocations(allocations, self._allocations):
            # A registration or report that changes nothing the solver sees (a client
            # registering the profile the scenario gave it): the state is kept, but no
            # new version is pushed to every subscriber or traced K times (with K
            # clients joining, that was K^2 allocation records and pushes).
            self._persist(registered, channels, round_index, self._version)
            with self._cond:
                self._registered = registered
                self._channels = channels
            log.debug("controller: round %d: %s leaves allocation v%d as it is",
                      round_index, reason, self._version)  # fmt: skip
            return self._version
        # Saved first: a store that cannot commit leaves the controller as it was.
        self._persist(registered, channels, round_index, self._version + 1)
        with self._cond:
            self._registered = registered
            self._channels = channels
            self._round = round_index
            self._version += 1
            self._allocations = allocations
            self._cond.notify_all()
        self._record(allocations, reason)
        return allocations[0].version

    def _record(self, allocations: tuple[AllocationInfo, ...], reason: str) -> None:
        first = allocations[0]
        log.info(
            "controller: round %d: allocation v%d (%s, policy %s): shares %s, "
            "predicted round %.3f s",
            first.round,
            first.version,
            reason,
            first.policy,
            ", ".join(f"{a.share:.3f}" for a in allocations),
            first.predicted_round_s,
        )
        if self.tracer is None:
            return
        for info in allocations:
            t = self.tracer.now()
            self.tracer.record(
                "event",
                "allocation",
                t,
                t,
                round=info.round,
                client=info.client_id,
                extra={**dataclasses.asdict(info), "reason": reason},
            )

    # ------------------------------------------------------------ requests

    def check_client(self, field: str, client_id: Any) -> int:
        """`client_id` as an int, or WireError naming `field` when it is not in [0, K)."""
        ok = isinstance(client_id, int | np.integer) and not isinstance(client_id, bool)
        if not (ok and 0 <= client_id < self.num_clients):
            raise WireError(field, f"={client_id!r}, must be in [0, {self.num_clients})")
        return int(client_id)

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("controller is closed: the run has ended")

    def register(self, info: RegisterInfo) -> RegisterReplyInfo:
        """Record client `info.client_id`'s profile; re-solve the current round if it changed.

        Raises WireError on an out-of-range id or value, StateError once
        closed, AllocationError if the new profile makes the round
        unsolvable (then the profile is not recorded).
        """
        k = self.check_client("RegisterRequest.client_id", info.client_id)
        ok = isinstance(info.num_samples, int) and not isinstance(info.num_samples, bool)
        if not (ok and info.num_samples >= 1):
            raise WireError("RegisterRequest.num_samples", f"={info.num_samples!r}, must be >= 1")
        flops = _check_finite("RegisterRequest.flops", info.flops, 0.0)
        if flops <= 0:
            raise WireError("RegisterRequest.flops", f"={info.flops!r}, must be > 0")
        _check_finite("RegisterRequest.tx_power_dbm", info.tx_power_dbm)
        _check_finite("RegisterRequest.distance_m", info.distance_m, 0.0)
        _check_finite("RegisterRequest.gain_db", info.gain_db)
        with self._change_lock:
            self._check_open()
            changed = self._registered.get(k) != info
            registered = {**self._registered, k: info}
            if changed and self._round >= 0:
                self._resolve_and_publish(
                    self._round, registered, dict(self._channels), f"register client {k}"
                )
            elif changed:
                self._persist(registered, self._channels, self._round, self._version)
                with self._cond:
                    self._registered = registered
            log.info(
                "controller: client %d registered (%d samples, %.3g FLOP/s, %.1f dBm)%s",
                k,
                info.num_samples,
                info.flops,
                info.tx_power_dbm,
                "" if changed else " again, unchanged",
            )
            return RegisterReplyInfo(
                num_registered=len(self._registered), num_expected=self.num_clients
            )

    def report_channel(self, info: ChannelReportInfo) -> int:
        """Replace client `info.client_id`'s channel; re-solve the current round and publish.

        Returns the version in force afterwards. Raises WireError on a bad
        id or value, StateError for a client that has not registered or
        once closed, AllocationError if the round becomes unsolvable (the
        report is then not recorded).
        """
        k = self.check_client("ReportChannelRequest.client_id", info.client_id)
        gain_db = _check_finite("ReportChannelRequest.gain_db", info.gain_db)
        distance_m = _check_finite("ReportChannelRequest.distance_m", info.distance_m, 0.0)
        if gain_db == 0 and distance_m == 0:
            raise WireError(
                "ReportChannelRequest",
                "gain_db=0 and distance_m=0: a report must carry a gain or a distance",
            )
        with self._change_lock:
            self._check_open()
            if k not in self._registered:
                raise StateError(f"client_id={k} reported a channel before registering")
            channels = {**self._channels, k: info}
            if self._round >= 0:
                return self._resolve_and_publish(
                    self._round, dict(self._registered), channels, f"channel report of client {k}"
                )
            self._persist(self._registered, channels, self._round, self._version)
            with self._cond:
                self._channels = channels
            return self._version

    def start_round(self, round_index: int) -> int:
        """Draw round `round_index`'s channel, solve its shares, publish; returns the version.

        Rounds move forward only (the same round again re-solves it).
        Raises StateError on a past round or once closed, AllocationError
        when the solve fails (the previous allocation stays in force).
        """
        ok = isinstance(round_index, int | np.integer) and not isinstance(round_index, bool)
        if not (ok and round_index >= 0):
            raise WireError("round", f"={round_index!r}, must be an integer >= 0")
        with self._change_lock:
            self._check_open()
            if round_index < self._round:
                raise StateError(
                    f"round {round_index} is stale: the controller is at round {self._round}"
                )
            return self._resolve_and_publish(
                int(round_index),
                dict(self._registered),
                dict(self._channels),
                f"start of round {round_index}",
            )

    # ------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plan, registrations, channel reports, round and version, as JSON values."""
        with self._cond:
            return self._state_of(self._registered, self._channels, self._round, self._version)

    def _state_of(
        self,
        registered: dict[int, RegisterInfo],
        channels: dict[int, ChannelReportInfo],
        round_index: int,
        version: int,
    ) -> dict[str, Any]:
        return {
            "plan": dataclasses.asdict(self.plan),
            "registered": {str(k): dataclasses.asdict(v) for k, v in sorted(registered.items())},
            "channels": {str(k): dataclasses.asdict(v) for k, v in sorted(channels.items())},
            "round": round_index,
            "version": version,
        }

    def _persist(
        self,
        registered: dict[int, RegisterInfo],
        channels: dict[int, ChannelReportInfo],
        round_index: int,
        version: int,
    ) -> None:
        """Save the state a change is about to make, before it is made (the
        store raises StorageError when it cannot commit: then nothing changed,
        and the caller's retry finds the change still to do)."""
        if self.on_change is not None:
            self.on_change(self._state_of(registered, channels, round_index, version))

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict()` saved (a restarted fed server), before any round starts.

        The plan is the saved one: the run's rounds were counted with it (a
        different solve here, say another solver build, must not change the
        run midway). Registrations and channel reports come back, so the
        round's re-solve gives the shares it gave before; the version
        continues, so a client subscribed with the last version it saw gets
        the next publication and not an older number.
        """
        saved_plan = Plan(**state["plan"])
        if saved_plan != self.plan:
            log.warning(
                "controller: the saved plan %s differs from this solve %s; keeping the saved one",
                saved_plan,
                self.plan,
            )
        registered = {int(k): RegisterInfo(**v) for k, v in state["registered"].items()}
        channels = {int(k): ChannelReportInfo(**v) for k, v in state["channels"].items()}
        with self._change_lock:
            if self._round >= 0:
                raise StateError("controller: restore after a round started")
            with self._cond:
                self.plan = saved_plan
                self._registered = registered
                self._channels = channels
                self._version = int(state["version"])
        log.info(
            "controller: restored plan (%s x %s), %d registrations, "
            "%d channel reports, allocation v%d of round %d",
            counted(saved_plan.num_local_steps, "local step"),
            counted(saved_plan.num_rounds, "round"),
            len(registered),
            len(channels),
            self._version,
            int(state["round"]),
        )

    # ------------------------------------------------------------ subscriptions

    def current(self, client_id: int) -> AllocationInfo | None:
        """The allocation in force for `client_id`; None before the first publication."""
        k = self.check_client("client_id", client_id)
        with self._cond:
            return self._allocations[k] if self._allocations else None

    def wait_update(
        self, client_id: int, after_version: int, timeout_s: float | None
    ) -> AllocationInfo | None:
        """The client's allocation once its version exceeds `after_version`.

        Returns at once when one already does; None on timeout or once the
        controller is closed (a subscription then ends).
        """
        k = self.check_client("client_id", client_id)
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or self._version > after_version, timeout=timeout_s
            )
            if self._closed or self._version <= after_version:
                return None
            return self._allocations[k]

    def wake(self) -> None:
        """Wake every waiter so it can re-check its own exit condition (a cancelled stream)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """End the run: waiters wake and get None, later changes raise StateError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        log.info("controller: closed at round %d, allocation v%d", self._round, self._version)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    @property
    def round(self) -> int:
        with self._cond:
            return self._round

    def snapshot(self) -> ControllerSnapshot:
        with self._cond:
            return ControllerSnapshot(
                round=self._round,
                version=self._version,
                registered=dict(self._registered),
                channels=dict(self._channels),
                allocations=self._allocations,
                closed=self._closed,
            )

    def round_inputs(self, round_index: int) -> DelayInputs:
        """Delay inputs of a round with the current overrides (reports, tests)."""
        with self._cond:
            registered, channels = dict(self._registered), dict(self._channels)
        return self._inputs(round_index, registered, channels)
