"""Run summary arithmetic (fedsllm/summary.py) on a synthetic trace with known answers."""

from __future__ import annotations

import math

import pytest

from fedsllm.summary import summarize
from fedsllm.telemetry.records import EventKind, Phase
from tests.fedsllm.report.synthetic import typed


def _span(name, t0, t1, *, client=0, round=0, role="client", **extra):
    return typed(
        {
            "kind": "span",
            "role": role,
            "client": client,
            "round": round,
            "step": 0,
            "name": name,
            "t0": t0,
            "t1": t1,
            "bytes": 0,
            "extra": extra,
        }
    )


def _event(name, t, *, client=0, round=0, role="client", **extra):
    return typed(
        {
            "kind": "event",
            "role": role,
            "client": client,
            "round": round,
            "step": -1,
            "name": name,
            "t0": t,
            "t1": t,
            "bytes": 0,
            "extra": extra,
        }
    )


RECORDS = [
    _span("client_forward", 100.0, 100.1),
    _event("val_loss", 100.05, round=-1, loss=3.0),
    _event("train_loss", 100.5, client=0, loss=2.0),
    _event("train_loss", 100.6, client=1, loss=4.0),
    _span(
        "server_compute",
        100.2,
        100.3,
        client=0,
        role="main_server",
        mode="train",
        receive_s=0.5,
        uplink_bytes=125_000,
    ),
    _span(
        "server_compute",
        100.3,
        100.4,
        client=1,
        role="main_server",
        mode="train",
        receive_s=1.0,
        uplink_bytes=125_000,
    ),
    _span(
        "server_compute",
        100.4,
        100.45,
        client=0,
        role="main_server",
        mode="eval",
        receive_s=9.0,
        uplink_bytes=999,
    ),
    _span("client_backward", 100.6, 100.7, client=1, device={"overrun_s": 0.25, "target_s": 0.1}),
    _event("allocation", 100.0, client=0, role="fed_server", uplink_bps=2e6, bandwidth_hz=5e6),
    _event("allocation", 101.0, client=0, role="fed_server", uplink_bps=4e6, bandwidth_hz=7e6),
    _event("round_done", 102.0, client=-1, role="fed_server", num_clients=2),
    _event("val_loss", 102.1, round=0, loss=2.5),
    _span("client_forward", 102.2, 102.4, round=1),
    _event("train_loss", 102.5, client=0, round=1, loss=1.0),
    _event("round_done", 103.5, client=-1, round=1, role="fed_server"),
    _event("val_loss", 103.6, round=1, loss=2.0),
]


def test_per_round_losses_and_wall_times() -> None:
    summary = summarize(RECORDS)
    r0, r1 = summary.rounds
    assert (r0.round, r0.train_loss, r0.num_clients, r0.num_steps) == (0, 3.0, 2, 2)
    # The report's window: round 0 opens when the last client starts (client 1's
    # backward at 100.6; client 0 started at 100.0) and ends at round_done 102.0.
    assert r0.wall_s == pytest.approx(1.4)
    assert r0.val_loss == 2.5
    assert (r1.train_loss, r1.wall_s, r1.val_loss) == (1.0, pytest.approx(1.5), 2.0)
    assert summary.initial_val_loss == 3.0 and summary.final_val_loss == 2.0
    assert summary.total_wall_s == pytest.approx(3.5)  # first span 100.0 -> last end 103.5


def test_wall_times_agree_with_the_report() -> None:
    from fedsllm.report.phases import measure_rounds

    windows = [m.window_s for m in measure_rounds(RECORDS, 1.0)]
    assert [r.wall_s for r in summarize(RECORDS).rounds] == pytest.approx(windows)


def test_partial_run_has_nan_wall_for_unfinished_rounds() -> None:
    partial = [r for r in RECORDS if not (r.event is EventKind.ROUND_DONE and r.round == 1)]
    r0, r1 = summarize(partial).rounds
    assert r0.wall_s == pytest.approx(1.4)
    assert math.isnan(r1.wall_s) and r1.train_loss == 1.0
    assert summarize(partial).total_wall_s == pytest.approx(2.0)
    empty = summarize([_event("train_loss", 1.0, loss=2.0)])
    assert math.isnan(empty.rounds[0].wall_s) and math.isnan(empty.total_wall_s)


def test_val_losses_initial_and_final() -> None:
    from fedsllm.summary import final_val_loss, initial_val_loss, val_losses

    val = val_losses(RECORDS)
    assert val == {-1: 3.0, 0: 2.5, 1: 2.0}
    assert (initial_val_loss(val), final_val_loss(val)) == (3.0, 2.0)
    assert math.isnan(final_val_loss({-1: 3.0})) and math.isnan(initial_val_loss({0: 1.0}))


def test_links_allocated_against_achieved() -> None:
    links = {link.client: link for link in summarize(RECORDS).links}
    assert links[0].allocated_uplink_bps == pytest.approx(3e6)  # mean of the pushes
    assert links[0].allocated_bandwidth_hz == pytest.approx(6e6)
    assert links[0].achieved_uplink_bps == pytest.approx(2e6)  # 125 kB in 0.5 s, eval ignored
    assert links[1].achieved_uplink_bps == pytest.approx(1e6)
    assert math.isnan(links[1].allocated_uplink_bps)
    assert links[1].overrun_s == pytest.approx(0.25) and links[0].overrun_s == 0.0


def test_achieved_rates_are_emulated_under_time_dilation() -> None:
    """Under link.time_dilation=4 the links ran 4x slower in wall time than allocated:
    fedsllm run showed the achieved rate divided by 4 (15.6 allocated, 3.9 achieved);
    rounds stay in wall seconds, and the summary says which dilation it used."""
    summary = summarize(RECORDS, time_dilation=4.0)
    links = {link.client: link for link in summary.links}
    assert links[0].achieved_uplink_bps == pytest.approx(8e6)  # 125 kB in 0.5 s / 4
    assert links[1].achieved_uplink_bps == pytest.approx(4e6)
    assert links[0].allocated_uplink_bps == pytest.approx(3e6)
    assert summary.rounds[0].wall_s == pytest.approx(1.4) and summary.time_dilation == 4.0


def test_links_state_the_downlink_rate_the_gradients_were_paced_at() -> None:
    """Client 0's steps asked the main server for no pacing (the default downlink): it is
    unshaped whatever an allocation said; client 1's were paced at 1.6 Mbit/s."""
    recs = [
        *RECORDS,
        _event(
            "allocation",
            100.0,
            client=0,
            role="fed_server",
            uplink_bps=2e6,
            downlink_bps=8e6,
            bandwidth_hz=5e6,
        ),
        _span("wait_reply", 100.2, 100.4, client=0, downlink_bps=0.0),
        _span("wait_reply", 100.3, 100.5, client=1, downlink_bps=1.6e6),
    ]
    links = {link.client: link for link in summarize(recs).links}
    assert not links[0].downlink_paced and links[0].downlink_bps == 0.0  # 0: unshaped
    assert links[1].downlink_paced and links[1].downlink_bps == pytest.approx(1.6e6)
    # Without recorded step rates (an older trace) the allocations' downlink is used:
    # 0 in every push (the default) is unshaped.
    old = {link.client: link for link in summarize(RECORDS).links}
    assert not old[0].downlink_paced and old[0].downlink_bps == 0.0
    pushed = [r for r in recs if r.phase is not Phase.WAIT_REPLY]
    assert {link.client: link for link in summarize(pushed).links}[0].downlink_bps == 8e6
