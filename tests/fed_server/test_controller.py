"""The allocation controller without gRPC: plan, per-round shares, rates, re-solves,
subscriptions, and refusal of bad input without any state change."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from fed_server.controller import Controller, Plan
from fedsllm.config import POLICIES, load_scenario
from fedsllm.delay.inputs import delay_inputs
from fedsllm.delay.rates import predict_round_delay
from fedsllm.delay.solvers import exact_round_time, shares_allocation, solve_allocation
from fedsllm.errors import AllocationError, ConfigError, StateError, WireError
from fedsllm.model.counts import count_scenario
from fedsllm.trace import Tracer, read_records
from fedsllm.wire.messages import AllocationInfo, ChannelReportInfo, RegisterInfo

NUM_CLIENTS = 3
ISSUED = 1234.5


def _scenario(*overrides: str):
    base = [
        "data.seq_len=32",
        f"clients.num_clients={NUM_CLIENTS}",
        "policy.name='optimal'",
        "seed=3",
    ]
    # One scenario serves every policy here, and `fedsllm plan` (which evaluates them
    # all): a policy's own parameter is set whichever policy a test picks.
    return load_scenario(None, [*base, *overrides], evaluated=POLICIES)


@pytest.fixture(scope="module")
def counts():
    return count_scenario(_scenario())


def _controller(counts, *overrides: str, tracer: Tracer | None = None) -> Controller:
    return Controller(_scenario(*overrides), counts=counts, clock=lambda: ISSUED, tracer=tracer)


def _register(ctrl: Controller, k: int, **changes) -> None:
    profile = ctrl.scenario.profile(k)
    values = {
        "client_id": k,
        "num_samples": 100 + k,
        "flops": profile.flops,
        "tx_power_dbm": profile.tx_power_dbm,
        "distance_m": 0.0,
        "gain_db": 0.0,
        **changes,
    }
    ctrl.register(RegisterInfo(**values))


def _register_all(ctrl: Controller) -> None:
    for k in range(NUM_CLIENTS):
        _register(ctrl, k)


def _shares(ctrl: Controller) -> np.ndarray:
    return np.array([ctrl.current(k).bandwidth_hz for k in range(NUM_CLIENTS)])


# ---------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("policy", "fixed_eta"),
    [("optimal", None), ("opt_fixed_eta", 0.3), ("equal", 0.3), ("equal_opt_eta", None)],
)
def test_plan_is_the_solvers(counts, policy: str, fixed_eta: float | None) -> None:
    ctrl = _controller(counts, f"policy.name='{policy}'", "policy.fixed_eta=0.3")
    inputs = delay_inputs(ctrl.scenario, 0, counts)
    b = inputs.bandwidth_hz
    if policy in ("optimal", "opt_fixed_eta"):
        alloc = solve_allocation(inputs, "exact", fixed_eta, policy=policy)
    else:
        alloc = shares_allocation(inputs, np.full(NUM_CLIENTS, b / NUM_CLIENTS), policy, fixed_eta)
    plan = ctrl.plan
    assert isinstance(plan, Plan) and plan.policy == policy
    assert plan.eta == pytest.approx(alloc.eta, rel=1e-9)
    assert plan.num_local_steps == alloc.n_int
    assert plan.num_rounds == alloc.num_rounds_int
    assert plan.predicted_round_s == pytest.approx(alloc.round_time_int_s, rel=1e-9)
    assert plan.predicted_total_s == pytest.approx(alloc.num_rounds_int * alloc.round_time_int_s)
    if fixed_eta is not None:
        assert plan.eta == fixed_eta
        assert plan.num_local_steps == math.ceil(ctrl.scenario.convergence.v * math.log2(1 / 0.3))
    else:
        assert plan.eta != 0.3


def test_fixed_steps_has_no_controller(counts) -> None:
    with pytest.raises(ConfigError, match="policy.name"):
        _controller(counts, "policy.name='fixed_steps'")


# ---------------------------------------------------------------- per-round shares


def test_optimal_pushes_the_solvers_shares(counts) -> None:
    ctrl = _controller(counts)
    _register_all(ctrl)
    assert ctrl.current(0) is None
    version = ctrl.start_round(0)
    inputs = delay_inputs(ctrl.scenario, 0, counts)
    n_int = ctrl.plan.num_local_steps
    _, expected = exact_round_time(inputs, float(n_int))
    shares = _shares(ctrl)
    np.testing.assert_allclose(shares, expected, rtol=1e-12)
    np.testing.assert_allclose(
        shares, solve_allocation(inputs, eta=ctrl.plan.eta).bandwidth_int_hz, rtol=1e-6
    )
    assert shares.sum() == pytest.approx(inputs.bandwidth_hz, rel=1e-9)
    round_s = predict_round_delay(inputs, expected, n_int).round_time_s
    for k in range(NUM_CLIENTS):
        info = ctrl.current(k)
        assert (info.version, info.round, info.client_id) == (version, 0, k)
        assert info.policy == "optimal" and info.eta == ctrl.plan.eta
        assert info.num_local_steps == n_int and info.num_rounds == ctrl.plan.num_rounds
        assert info.share == pytest.approx(shares[k] / inputs.bandwidth_hz)
        assert info.predicted_round_s == pytest.approx(round_s, rel=1e-12)
        assert info.predicted_total_s == pytest.approx(ctrl.plan.num_rounds * round_s)
        assert info.issued_unix_s == ISSUED and info.downlink_bps == 0.0


def test_equal_gives_every_client_b_over_k(counts) -> None:
    ctrl = _controller(counts, "policy.name='equal'", "channel.bandwidth_hz=6e6")
    ctrl.start_round(0)
    np.testing.assert_allclose(_shares(ctrl), 2e6, rtol=1e-12)
    assert all(ctrl.current(k).share == pytest.approx(1 / 3) for k in range(NUM_CLIENTS))


def test_rates_follow_the_shannon_formula(counts) -> None:
    ctrl = _controller(counts, "channel.tx_power_dbm=13.0", "channel.downlink_bps=5e7")
    ctrl.start_round(0)
    inputs = delay_inputs(ctrl.scenario, 0, counts)
    # docs/MODEL.md section 2, from the dB figures by hand: p = 10^((dBm-30)/10) W.
    power_w = 10 ** ((13.0 - 30.0) / 10)
    n0 = 10 ** ((-174.0 - 30.0) / 10)
    np.testing.assert_allclose(inputs.power_w, power_w, rtol=1e-12)
    assert inputs.noise_psd_w_per_hz == pytest.approx(n0, rel=1e-12)
    b = _shares(ctrl)
    expected = b * np.log2(1 + inputs.gain * power_w / (n0 * b))
    got = np.array([ctrl.current(k).uplink_bps for k in range(NUM_CLIENTS)])
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert all(ctrl.current(k).downlink_bps == 5e7 for k in range(NUM_CLIENTS))


def test_registered_profile_overrides_the_scenario(counts) -> None:
    ctrl = _controller(counts)
    ctrl.start_round(0)
    before = _shares(ctrl)
    _register(
        ctrl, 2, flops=0.25 * ctrl.scenario.devices.client_flops, gain_db=-95.0, num_samples=77
    )
    inputs = ctrl.round_inputs(0)
    assert inputs.client_flops[2] == 0.25 * ctrl.scenario.devices.client_flops
    assert inputs.gain[2] == pytest.approx(10 ** (-9.5), rel=1e-12)
    assert inputs.data_sizes[2] == 77
    np.testing.assert_array_equal(inputs.gain[:2], delay_inputs(ctrl.scenario, 0, counts).gain[:2])
    # Membership change -> re-solved and published under a new version.
    assert ctrl.version == 2 and ctrl.snapshot().registered[2].num_samples == 77
    _, expected = exact_round_time(inputs, float(ctrl.plan.num_local_steps))
    np.testing.assert_allclose(_shares(ctrl), expected, rtol=1e-12)
    assert not np.allclose(_shares(ctrl), before)
    reply = ctrl.register(ctrl.snapshot().registered[2])
    assert (reply.num_registered, reply.num_expected) == (1, NUM_CLIENTS)
    assert ctrl.version == 2  # identical re-register: nothing to re-solve


def test_channel_report_reaches_every_subscriber(counts) -> None:
    ctrl = _controller(counts)
    for k in range(NUM_CLIENTS):
        _register(ctrl, k, gain_db=-100.0)
    v0 = ctrl.start_round(0)
    before = _shares(ctrl)
    got: dict[int, AllocationInfo | None] = {}

    def subscriber(k: int) -> None:
        got[k] = ctrl.wait_update(k, v0, timeout_s=10.0)

    threads = [threading.Thread(target=subscriber, args=(k,)) for k in range(NUM_CLIENTS)]
    for t in threads:
        t.start()
    version = ctrl.report_channel(ChannelReportInfo(client_id=1, gain_db=-115.0, distance_m=0.0))
    for t in threads:
        t.join(timeout=10.0)
    assert version > v0
    assert all(got[k] is not None and got[k].version == version for k in range(NUM_CLIENTS))
    after = np.array([got[k].bandwidth_hz for k in range(NUM_CLIENTS)])
    assert after[1] > before[1] * 1.5
    assert after[0] < before[0] and after[2] < before[2]
    assert after.sum() == pytest.approx(ctrl.scenario.channel.bandwidth_hz, rel=1e-9)
    assert ctrl.round_inputs(0).gain[1] == pytest.approx(10 ** (-11.5), rel=1e-12)


def test_rayleigh_rounds_differ_and_repeat_by_seed(counts) -> None:
    def rounds(seed: int) -> tuple[np.ndarray, np.ndarray]:
        ctrl = _controller(counts, "channel.fading='rayleigh'", f"seed={seed}")
        ctrl.start_round(0)
        first = _shares(ctrl)
        ctrl.start_round(1)
        assert ctrl.current(0).round == 1 and ctrl.version == 2
        return first, _shares(ctrl)

    r0, r1 = rounds(3)
    assert not np.allclose(r0, r1, rtol=1e-3)
    again0, again1 = rounds(3)
    np.testing.assert_array_equal(r0, again0)
    np.testing.assert_array_equal(r1, again1)
    other0, _ = rounds(4)
    assert not np.allclose(r0, other0, rtol=1e-3)


def test_no_fading_keeps_shares_across_rounds(counts) -> None:
    ctrl = _controller(counts)
    ctrl.start_round(0)
    first = _shares(ctrl)
    ctrl.start_round(1)
    np.testing.assert_array_equal(first, _shares(ctrl))
    assert ctrl.plan.eta == ctrl.current(0).eta


# ---------------------------------------------------------------- other policies


def test_proportional_shares_follow_gains(counts) -> None:
    ctrl = _controller(counts, "policy.name='proportional'")
    ctrl.start_round(0)
    gains = delay_inputs(ctrl.scenario, 0, counts).gain
    b = ctrl.scenario.channel.bandwidth_hz
    np.testing.assert_allclose(_shares(ctrl), b * gains / gains.sum(), rtol=1e-12)


def test_random_shares_are_seeded_per_round(counts) -> None:
    def rounds() -> tuple[np.ndarray, np.ndarray]:
        ctrl = _controller(counts, "policy.name='random'", "policy.num_random_draws=5")
        ctrl.start_round(0)
        first = _shares(ctrl)
        ctrl.start_round(1)
        return first, _shares(ctrl)

    r0, r1 = rounds()
    b = 20e6
    assert r0.sum() == pytest.approx(b, rel=1e-9) and np.all(r0 > 0)
    assert not np.allclose(r0, r1)
    again0, again1 = rounds()
    np.testing.assert_array_equal(r0, again0)
    np.testing.assert_array_equal(r1, again1)


def test_fixed_policy_reads_the_shares_file(counts, tmp_path: Path) -> None:
    path = tmp_path / "shares.json"
    path.write_text(json.dumps([0.5, 0.3, 0.2]))
    ctrl = _controller(counts, "policy.name='fixed'", f"policy.shares_file='{path}'")
    ctrl.start_round(0)
    np.testing.assert_allclose(_shares(ctrl), [10e6, 6e6, 4e6], rtol=1e-12)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[0.5, 0.3]", "3 fractions"),
        ("[0.6, 0.3, 0.2]", "sum to <= 1"),
        ("[0.5, 0.0, 0.2]", r"shares_file\[1\]"),
        ("not json", "JSON"),
    ],
)
def test_fixed_policy_refuses_bad_files(counts, tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "shares.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        _controller(counts, "policy.name='fixed'", f"policy.shares_file='{path}'")


def test_cvxpy_solver_agrees_with_exact(counts) -> None:
    fading = "channel.fading='rayleigh'"  # every round a new channel for one compiled problem
    exact = _controller(counts, "policy.name='opt_fixed_eta'", fading)
    convex = _controller(counts, "policy.name='opt_fixed_eta'", "policy.solver='cvxpy'", fading)
    assert exact.plan.num_local_steps == convex.plan.num_local_steps
    exact.start_round(0)
    convex.start_round(0)
    np.testing.assert_allclose(_shares(convex), _shares(exact), rtol=1e-4)
    compiled = convex._cvxpy
    exact.start_round(1)
    convex.start_round(1)
    assert convex._cvxpy is compiled  # one compiled problem for the whole run
    np.testing.assert_allclose(_shares(convex), _shares(exact), rtol=1e-4)
    assert convex.current(0).round == 1


@pytest.mark.parametrize("policy", ["fixed", "proportional", "equal", "random"])
def test_round_zero_shares_are_what_fedsllm_plan_reports(
    counts, tmp_path: Path, policy: str
) -> None:
    """The controller and `fedsllm plan` take the shares from one function, so they agree."""
    from fedsllm.cli.plan import plan_document
    from fedsllm.delay.policies import solve_policy

    path = tmp_path / "shares.json"
    path.write_text(json.dumps([0.4, 0.2, 0.2]))
    ctrl = _controller(counts, f"policy.name='{policy}'", f"policy.shares_file='{path}'")
    ctrl.start_round(0)
    pushed = _shares(ctrl)
    if policy == "random":
        # The plan averages its own draws; one round's draw is the same seed and round's.
        inputs = delay_inputs(ctrl.scenario, 0, counts)
        expected = solve_policy(
            inputs, "random", num_random_draws=1, seed=ctrl.scenario.seed, round_index=0
        ).bandwidth_hz
    else:
        doc = plan_document(ctrl.scenario)
        expected = np.array(doc["policies"][policy]["bandwidth_hz"])
    np.testing.assert_allclose(pushed, expected, rtol=1e-12)
    if policy == "fixed":
        b = delay_inputs(ctrl.scenario, 0, counts).bandwidth_hz
        np.testing.assert_allclose(pushed, [0.4 * b, 0.2 * b, 0.2 * b], rtol=1e-12)


# ---------------------------------------------------------------- subscriptions


def test_wait_update_returns_current_then_blocks(counts) -> None:
    ctrl = _controller(counts)
    assert ctrl.wait_update(0, 0, timeout_s=0.01) is None
    version = ctrl.start_round(0)
    assert ctrl.wait_update(0, 0, timeout_s=0.0) == ctrl.current(0)
    assert ctrl.wait_update(0, version, timeout_s=0.05) is None


def test_close_wakes_waiters_and_refuses_changes(counts) -> None:
    ctrl = _controller(counts)
    version = ctrl.start_round(0)
    got: dict[str, AllocationInfo | None] = {}

    def waiter() -> None:
        got["update"] = ctrl.wait_update(1, version, timeout_s=30.0)

    thread = threading.Thread(target=waiter)
    thread.start()
    ctrl.close()
    thread.join(timeout=5.0)
    assert not thread.is_alive() and "update" in got and got["update"] is None
    assert ctrl.closed
    with pytest.raises(StateError, match="closed"):
        ctrl.start_round(1)
    with pytest.raises(StateError, match="closed"):
        _register(ctrl, 0)
    assert ctrl.version == version


# ---------------------------------------------------------------- refusals


def _good_register(k: int = 0) -> dict:
    return {
        "client_id": k,
        "num_samples": 10,
        "flops": 1e9,
        "tx_power_dbm": 10.0,
        "distance_m": 0.0,
        "gain_db": 0.0,
    }


BAD_REGISTERS = [
    ({"client_id": NUM_CLIENTS}, "client_id"),
    ({"client_id": -1}, "client_id"),
    ({"num_samples": 0}, "num_samples"),
    ({"flops": math.nan}, "flops"),
    ({"flops": 0.0}, "flops"),
    ({"tx_power_dbm": math.inf}, "tx_power_dbm"),
    ({"distance_m": -5.0}, "distance_m"),
    ({"gain_db": math.nan}, "gain_db"),
]


@pytest.mark.parametrize(("change", "field"), BAD_REGISTERS)
def test_bad_register_is_refused_without_change(counts, change: dict, field: str) -> None:
    ctrl = _controller(counts)
    _register(ctrl, 1)
    ctrl.start_round(0)
    before = ctrl.snapshot()
    with pytest.raises(WireError) as err:
        ctrl.register(RegisterInfo(**{**_good_register(), **change}))
    assert err.value.field == f"RegisterRequest.{field}"
    assert ctrl.snapshot() == before


BAD_REPORTS = [
    (ChannelReportInfo(client_id=7, gain_db=-90.0, distance_m=0.0), WireError, "client_id"),
    (ChannelReportInfo(client_id=1, gain_db=math.nan, distance_m=0.0), WireError, "gain_db"),
    (ChannelReportInfo(client_id=1, gain_db=-90.0, distance_m=math.inf), WireError, "distance"),
    (ChannelReportInfo(client_id=1, gain_db=0.0, distance_m=0.0), WireError, "gain or a dist"),
    (ChannelReportInfo(client_id=2, gain_db=-90.0, distance_m=0.0), StateError, "registering"),
]


@pytest.mark.parametrize(("report", "error", "match"), BAD_REPORTS)
def test_bad_channel_report_is_refused_without_change(counts, report, error, match) -> None:
    ctrl = _controller(counts)
    _register(ctrl, 1)
    ctrl.start_round(0)
    before = ctrl.snapshot()
    with pytest.raises(error, match=match):
        ctrl.report_channel(report)
    assert ctrl.snapshot() == before


def test_bad_rounds_are_refused_without_change(counts) -> None:
    ctrl = _controller(counts)
    ctrl.start_round(2)
    before = ctrl.snapshot()
    with pytest.raises(StateError, match="stale"):
        ctrl.start_round(1)
    with pytest.raises(WireError, match="round"):
        ctrl.start_round(-1)
    assert ctrl.snapshot() == before


def test_solver_failure_keeps_the_previous_allocation(counts, tmp_path: Path) -> None:
    tracer = Tracer(tmp_path / "trace" / "controller.jsonl", "controller")
    ctrl = _controller(counts, tracer=tracer)
    ctrl.start_round(0)
    before = ctrl.snapshot()

    def failing(inputs, round_index):
        raise AllocationError("no feasible shares", status="infeasible")

    ctrl.solve_shares = failing  # type: ignore[method-assign]
    with pytest.raises(AllocationError, match="no feasible"):
        ctrl.start_round(1)
    with pytest.raises(AllocationError):
        _register(ctrl, 0)
    assert ctrl.snapshot() == before
    tracer.close()
    errors = [r for r in read_records(tmp_path / "trace") if r["name"] == "allocation_error"]
    assert len(errors) == 2 and errors[0]["round"] == 1
    assert errors[0]["extra"]["status"] == "infeasible"


# ---------------------------------------------------------------- tracing


def test_every_publication_is_traced_per_client(counts, tmp_path: Path) -> None:
    tracer = Tracer(tmp_path / "trace" / "controller.jsonl", "controller")
    ctrl = _controller(counts, "policy.name='equal'", tracer=tracer)
    ctrl.start_round(0)
    ctrl.start_round(1)
    tracer.close()
    records = read_records(tmp_path / "trace")
    allocs = [r for r in records if r["name"] == "allocation"]
    assert len(allocs) == 2 * NUM_CLIENTS
    assert [(r["round"], r["client"]) for r in allocs[-NUM_CLIENTS:]] == [
        (1, k) for k in range(NUM_CLIENTS)
    ]
    for r in allocs[-NUM_CLIENTS:]:
        info = ctrl.current(r["client"])
        for name in AllocationInfo.__dataclass_fields__:
            assert r["extra"][name] == getattr(info, name), name
    plans = [r for r in records if r["name"] == "plan"]
    assert len(plans) == 1 and plans[0]["extra"]["num_rounds"] == ctrl.plan.num_rounds


def test_clients_own_register_info_keeps_the_scenario_channel(counts) -> None:
    from fedsllm.roles import register_info

    ctrl = _controller(counts, "channel.fading='rayleigh'")
    for k in range(NUM_CLIENTS):
        ctrl.register(register_info(ctrl.scenario, k, 40 + k))
    ctrl.start_round(1)
    inputs = ctrl.round_inputs(1)
    expected = delay_inputs(ctrl.scenario, 1, counts)
    np.testing.assert_allclose(inputs.gain, expected.gain, rtol=1e-12)
    np.testing.assert_allclose(inputs.power_w, expected.power_w, rtol=1e-12)
    np.testing.assert_array_equal(inputs.data_sizes, [40, 41, 42])
    _, shares = exact_round_time(expected, float(ctrl.plan.num_local_steps))
    np.testing.assert_allclose(_shares(ctrl), shares, rtol=1e-9)


@pytest.mark.parametrize(("a", "v"), [(1.0, 2.0), (4.0, 6.0), (2.0, 3.0)])
def test_integer_plan_never_loses_to_equal(a: float, v: float) -> None:
    """The plan a run executes (integer n, rounds rounded up) of policy optimal is
    never slower than the unoptimized plan, which rounding the continuous
    optimum could not guarantee (a=1, v=2 was a case)."""
    from fedsllm.config import load_scenario

    over = [f"convergence.a={a}", f"convergence.v={v}"]
    optimal = Controller(load_scenario(overrides=[*over, "policy.name='optimal'"]))
    equal = Controller(load_scenario(overrides=[*over, "policy.name='equal'"]))
    assert optimal.plan.predicted_total_s <= equal.plan.predicted_total_s + 1e-9
    assert optimal.plan.num_local_steps >= 1


def test_max_rounds_runs_the_first_rounds_of_the_plan() -> None:
    from fedsllm.config import load_scenario

    full = Controller(load_scenario(overrides=["policy.name='optimal'"]))
    short = Controller(load_scenario(overrides=["policy.name='optimal'", "policy.max_rounds=3"]))
    assert full.plan.num_rounds > 3 and short.plan.num_rounds == 3
    assert (short.plan.eta, short.plan.num_local_steps) == (
        full.plan.eta,
        full.plan.num_local_steps,
    )
    assert short.plan.predicted_total_s == pytest.approx(3 * full.plan.predicted_round_s)


def test_joining_clients_with_their_scenario_profiles_publish_nothing_new(
    counts, tmp_path: Path
) -> None:
    """K clients registering the profiles the scenario gave them re-solved the round K
    times, each publication traced once per client: K^2 allocation records (10,200 at
    K=100) and pushes, for allocations all equal. Only a change is published now."""
    tracer = Tracer(tmp_path / "trace" / "controller.jsonl", "controller")
    ctrl = _controller(counts, tracer=tracer)
    ctrl.start_round(0)
    first = _shares(ctrl)
    _register_all(ctrl)
    assert ctrl.version == 1 and ctrl.snapshot().registered.keys() == set(range(NUM_CLIENTS))
    np.testing.assert_array_equal(_shares(ctrl), first)
    _register(ctrl, 1, flops=ctrl.scenario.profile(1).flops * 0.25)  # a real change
    assert ctrl.version == 2 and _shares(ctrl)[1] != first[1]
    tracer.close()
    allocs = [r for r in read_records(tmp_path / "trace") if r["name"] == "allocation"]
    assert len(allocs) == 2 * NUM_CLIENTS
    assert {r["extra"]["reason"] for r in allocs} == {"start of round 0", "register client 1"}
