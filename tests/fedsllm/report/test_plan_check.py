"""fedsllm.report.plan_check on synthetic telemetry with known answers: a run
that follows the plan passes; a client that ran one step too few, an
allocation applied with other rates or never applied, a step that asked for a
stale downlink rate, and a missing round are each reported."""

from __future__ import annotations

from typing import Any

from fedsllm.report.plan_check import check_plan
from fedsllm.telemetry.records import TelemetryRecord
from tests.fedsllm.report.synthetic import typed

N, ROUNDS, K = 2, 2, 3
UP, DOWN, HZ = 1e6, 2e6, 5e5


def event(role: str, client: int, rnd: int, name: str, t: float, **extra: Any) -> TelemetryRecord:
    return typed(
        {"kind": "event", "role": role, "client": client, "round": rnd, "step": -1,
         "name": name, "t0": t, "t1": t, "bytes": 0, "extra": extra}
    )  # fmt: skip


def span(client: int, rnd: int, step: int, name: str, t: float, **extra: Any) -> TelemetryRecord:
    return typed(
        {"kind": "span", "role": "client", "client": client, "round": rnd, "step": step,
         "name": name, "t0": t, "t1": t + 0.1, "bytes": 0, "extra": extra}
    )  # fmt: skip


def alloc(k: int, version: int, rnd: int, scale: float = 1.0) -> dict[str, Any]:
    return {"version": version, "round": rnd, "uplink_bps": UP * scale,
            "downlink_bps": DOWN * scale, "bandwidth_hz": HZ * scale,
            "num_local_steps": N}  # fmt: skip


def planned_run(steps: int = N) -> list[TelemetryRecord]:
    """Plan, one allocation per client applied before round 0, then ROUNDS x N steps."""
    records = [
        event(
            "fed_server",
            -1,
            -1,
            "plan",
            0.0,
            policy="optimal",
            eta=0.5,
            num_local_steps=N,
            num_rounds=ROUNDS,
            predicted_round_s=1.0,
            predicted_total_s=2.0,
        )
    ]
    for k in range(K):
        records.append(event("fed_server", k, 0, "allocation", 1.0, **alloc(k, 1, 0)))
        records.append(event("client", k, 0, "rates_applied", 1.5, **alloc(k, 1, 0)))
        for r in range(ROUNDS):
            for s in range(steps):
                t = 10.0 + r * 10 + s
                records.append(span(k, r, s, "wait_reply", t, downlink_bps=DOWN))
                records.append(span(k, r, s, "client_backward", t + 0.2))
    return records


def test_a_run_that_follows_the_plan_passes() -> None:
    # A version superseded before the client subscribed is never delivered: fine.
    superseded = event("fed_server", 1, 0, "allocation", 0.5, **alloc(1, 0, 0, scale=3))
    check = check_plan([superseded, *planned_run()])
    assert check.ok, check.mismatches
    assert (check.num_local_steps, check.num_rounds, check.num_clients) == (N, ROUNDS, K)
    assert check.num_steps_checked == K * ROUNDS
    assert check.num_allocations_checked == K
    assert check.num_rates_checked == K * ROUNDS * N
    assert "all as planned" in check.summary()


def test_a_client_that_ran_fewer_steps_is_reported() -> None:
    records = [
        r for r in planned_run()
        if not (r.client == 1 and r.round == 1 and r.step == N - 1)
    ]  # fmt: skip
    check = check_plan(records)
    assert not check.ok
    assert any(m.startswith(f"client 1 round 1: {N - 1} steps, plan {N}") for m in check.mismatches)


def test_rates_applied_other_than_issued_or_never_are_reported() -> None:
    records = planned_run()
    # Client 0 applied other rates; client 2 got a second allocation, other rates
    # for round 1, that it never applied (a superseded version need not be).
    records = [
        event("client", 0, 0, "rates_applied", 1.5, **alloc(0, 1, 0, scale=0.5))
        if r.name == "rates_applied" and r.client == 0
        else r
        for r in records
    ]
    records.append(event("fed_server", 2, 1, "allocation", 15.0, **alloc(2, 2, 1, scale=2)))
    check = check_plan(records)
    text = "\n".join(check.mismatches)
    assert "client 0 v1: uplink_bps applied 500000, issued 1e+06" in text
    assert "client 0 round 0 step 0: asked 2e+06 bit/s downlink, v1 gives 1e+06" in text
    assert "client 2 round 1: ran on v1 uplink_bps 1e+06, controller's v2 2e+06" in text
    assert not any("client 1" in m for m in check.mismatches)


def test_no_plan_or_a_missing_round_fails() -> None:
    assert not check_plan([r for r in planned_run() if r.name != "plan"]).ok
    check = check_plan([r for r in planned_run() if r.round != 1 or r.name == "allocation"])
    assert any("rounds trained [0], plan has 2" in m for m in check.mismatches)
