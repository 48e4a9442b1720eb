"""A round that spans a restart of the run's processes (fedsllm run --resume after a
kill, or the supervisor restarting a role) on synthetic traces with known answers: the
time the run was down is not the round's delay.

The defect: a run killed in round 6 and resumed later showed round 6 as 35 s
(report.md `| 6 | 35.078 | 1.304 | -96.3% |`, total error -72.8%) where every other
round took about 1.07 s: the window ran from round 5's end in the first launch to
round 6's end in the second, downtime and start-up included.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from fedsllm.report import build_report, write_report
from fedsllm.report.phases import measure_rounds, process_restarts
from fedsllm.summary import summarize, train_losses
from fedsllm.telemetry.records import TelemetryRecord
from tests.fedsllm.report.synthetic import (
    DIL,
    T0,
    _event,
    _one_step,
    _span,
    make_run_dir,
    synthetic_records,
)

GAP = 100.0
"""Wall seconds from the first launch's start to the second's (the run was down for
most of them)."""


def _start(role: str, client: int, t: float) -> TelemetryRecord:
    """The record a process leaves when it starts: a client's or the main server's
    clock_offset (fedsllm.roles.align_clock), the fed server's plan."""
    if role == "fed_server":
        return _event("fed_server", -1, -1, "plan", t, num_rounds=3, num_local_steps=1)
    return _event(role, client, -1, "clock_offset", t, offset_s=0.0, rtt_s=0.001)


def _close(rnd: int, t: float) -> list[TelemetryRecord]:
    """Aggregation [t, t + 0.2] wall and the round_done event at its end."""
    return [
        _span("fed_server", -1, rnd, -1, "aggregation", t, t + 0.2, 20_000),
        _event("fed_server", -1, rnd, "round_done", t + 0.2, num_clients=2),
    ]


def _both_train(rnd: int, t: float) -> list[TelemetryRecord]:
    """Both clients download the global adapter at t, train one step and upload: the
    round closes at t + 1.8 wall (a 0.9 s emulated window)."""
    recs: list[TelemetryRecord] = []
    for k in (0, 1):
        recs.append(_span("client", k, rnd, -1, "global_download", t, t + 0.1, 20_000))
        recs += _one_step(k, rnd, t + 0.1, 0.4)
        recs.append(_span("client", k, rnd, -1, "adapter_upload", t + 1.3, t + 1.5, 20_000))
    return recs + _close(rnd, t + 1.6)


def resumed_records(rerun_whole: bool) -> list[TelemetryRecord]:
    """Two clients, three rounds, two launches (wall seconds, dilation 2).

    Launch 1 runs round 0 (window [0, 1.7]) and is killed in round 1. Launch 2 starts
    GAP later: every process starts again, client 1 first, and it trains round 1 again
    from GAP + 1.1, before client 0 has even started (GAP + 1.15), as in a real resume.
    `rerun_whole`: client 0 evaluates the global adapter of round 0 again, trains round
    1 again from GAP + 1.7, and round 1 closes at GAP + 3.4. Not `rerun_whole`: client 0
    had trained and pushed round 1 before the kill, so only client 1 trains it and the
    round closes at GAP + 2.8. Round 2 is a plain round after that.
    """
    g = GAP
    recs = [
        _start("fed_server", -1, -4.0),
        _start("main_server", -1, -3.0),
        _start("client", 0, -2.0),
        _start("client", 1, -2.0),
        _span("client", 0, -1, -1, "eval", -1.0, 0.0),
        _event("client", 0, -1, "val_loss", 0.0, loss=5.0),
    ]
    for k in (0, 1):
        recs += _one_step(k, 0, 0.0, 0.4)
        recs.append(_span("client", k, 0, -1, "adapter_upload", 1.2, 1.4, 20_000))
    recs += _close(0, 1.5)
    # Round 1 in launch 1, cut short by the kill.
    for k in (0, 1):
        recs.append(_span("client", k, 1, -1, "global_download", 1.7, 1.8, 20_000))
    if rerun_whole:
        recs.append(_span("client", 0, 1, 0, "client_forward", 1.8, 2.0))
    else:
        recs += _one_step(0, 1, 1.8, 0.4)
        recs.append(_span("client", 0, 1, -1, "adapter_upload", 3.0, 3.2, 20_000))
    recs.append(_span("client", 1, 1, 0, "client_forward", 1.8, 2.0))
    recs.append(_span("client", 1, 1, 0, "uplink", 2.0, 2.3, 100_000))
    # Launch 2: every process starts again.
    recs += [
        _start("fed_server", -1, g - 0.5),
        _start("main_server", -1, g),
        _start("client", 1, g + 1.0),
        _span("client", 1, 1, -1, "global_download", g + 1.05, g + 1.1, 20_000),
        _start("client", 0, g + 1.15),
    ]
    recs += _one_step(1, 1, g + 1.1, 0.4)
    recs.append(_span("client", 1, 1, -1, "adapter_upload", g + 2.3, g + 2.5, 20_000))
    if rerun_whole:
        recs.append(_span("client", 0, 0, -1, "eval", g + 1.2, g + 1.6))
        recs.append(_event("client", 0, 0, "val_loss", g + 1.6, loss=4.5))
        recs.append(_span("client", 0, 1, -1, "global_download", g + 1.6, g + 1.7, 20_000))
        recs += _one_step(0, 1, g + 1.7, 0.4)
        recs.append(_span("client", 0, 1, -1, "adapter_upload", g + 2.9, g + 3.1, 20_000))
        end = g + 3.4
    else:
        end = g + 2.8
    recs += _close(1, end - 0.2)
    recs += _both_train(2, end)
    return sorted(recs, key=lambda r: r.t0)


# ------------------------------------------------------------------ measurement


def test_process_restarts_are_the_starts_after_each_process_first() -> None:
    """A process's first start is no restart; each later one is (any of its sources)."""
    assert [t - T0 for t in process_restarts(resumed_records(True))] == pytest.approx(
        [GAP - 0.5, GAP, GAP + 1.0, GAP + 1.15]
    )
    assert process_restarts(synthetic_records()) == []


def test_a_round_run_again_whole_after_a_resume_is_measured_from_its_rerun() -> None:
    """Both clients train round 1 again after the resume: the window opens when the last
    of them starts it again (as round 0's does), so the work lost with the first launch,
    the downtime and the start-up are left out; nothing before the restart counts."""
    r0, r1, r2 = measure_rounds(resumed_records(True), DIL)
    origin = 1.0  # the run starts with the eval at -1.0 wall
    assert r1.restarted and not r1.partial and r1.complete
    assert r1.start_s == pytest.approx((origin + GAP + 1.7) / DIL)
    assert r1.window_s == pytest.approx(1.7 / DIL)
    assert r1.eval_s == 0.0  # client 0's eval [GAP+1.2, GAP+1.6] ends before the window
    assert r1.measured_s == pytest.approx(1.7 / DIL)  # was (GAP + 1.7 - 0.4) / DIL
    assert r1.restart_cut_s == pytest.approx((GAP + 1.7 - 1.7) / DIL)
    # client 1 started at GAP + 1.1, client 0 at GAP + 1.7 after its 0.4 s eval
    assert r1.startup_skew_s == pytest.approx(0.2 / DIL)
    c0 = r1.clients[0]
    assert c0.phases_s["compute"] == pytest.approx(0.4 / DIL)  # not the aborted forward
    assert c0.num_steps == 1 and c0.start_s == pytest.approx(0.0)
    assert r1.clients[1].uplink_bytes == 100_000  # the rerun's uplink, not the lost one
    assert r1.clients[1].start_s == pytest.approx(-0.6 / DIL)
    for c in r1.clients:
        assert sum(c.phases_s.values()) == pytest.approx(r1.window_s)
    for r in (r0, r2):
        assert not r.restarted and not r.partial and r.restart_cut_s == 0.0
    assert r0.measured_s == pytest.approx(1.7 / DIL)
    assert r2.measured_s == pytest.approx(1.8 / DIL)
    assert r2.start_s == pytest.approx((origin + GAP + 3.4) / DIL)


def test_a_round_split_by_a_resume_is_flagged_partial() -> None:
    """Client 0 pushed round 1 before the kill and did not train it again: the part
    after the restart is not the whole round, and the round says so."""
    _, r1, r2 = measure_rounds(resumed_records(False), DIL)
    assert r1.restarted and r1.partial and r1.complete
    assert r1.window_s == pytest.approx(1.7 / DIL)  # from client 1's restart to the close
    assert r1.clients[0].num_steps == 0  # its work is before the restart
    assert r1.clients[1].num_steps == 1
    assert not r2.restarted and not r2.partial


def test_a_first_start_inside_a_round_is_not_a_restart() -> None:
    """A client that starts (aligns its clock) for the first time while a round runs,
    as a late joiner does, changes nothing."""
    base = synthetic_records()
    late = sorted([*base, _start("client", 1, 2.05)], key=lambda r: r.t0)
    assert [m.to_dict() for m in measure_rounds(late, DIL)] == [
        m.to_dict() for m in measure_rounds(base, DIL)
    ]


def test_a_role_restarted_while_clients_trained_makes_the_round_partial() -> None:
    """The supervisor restarts the main server in round 1 while the clients train: their
    work is kept (their processes did not restart), the window opens when the last of
    them starts, but the restart came after that, so the round is partial."""
    recs = [*synthetic_records(), _start("main_server", -1, -3.0), _start("main_server", -1, 3.0)]
    r0, r1 = measure_rounds(sorted(recs, key=lambda r: r.t0), DIL)
    assert not r0.restarted
    assert r1.restarted and r1.partial
    assert r1.start_s == pytest.approx((1.0 + 2.6) / DIL)  # client 0 starts after its eval
    assert r1.clients[0].num_steps == 1
    # the main server's work for client 1 before its restart is lost with it
    assert r1.clients[1].phases_s["server"] == 0.0


def test_a_client_restarted_that_runs_the_round_again_is_measured_whole() -> None:
    """The supervisor restarts client 1 in round 1 and it trains the round again: nothing
    of the round is lost, and the window opens when client 1 starts again (client 0's
    head start is start-up skew, as in round 0)."""
    base = [r for r in synthetic_records() if not (r.client == 1 and r.round == 1)]
    recs = base + [
        _start("client", 1, -2.0),
        _span("client", 1, 1, -1, "global_download", 2.0, 2.1, 20_000),
        _span("client", 1, 1, 0, "client_forward", 2.1, 2.3),  # killed here
        _start("client", 1, 2.5),
        *_one_step(1, 1, 2.6, 0.2),  # ends at 3.6 wall
        _span("client", 1, 1, -1, "adapter_upload", 3.6, 3.8, 20_000),
    ]
    r1 = measure_rounds(sorted(recs, key=lambda r: r.t0), DIL)[1]
    assert r1.restarted and not r1.partial
    assert r1.start_s == pytest.approx((1.0 + 2.6) / DIL)
    assert r1.restart_cut_s == pytest.approx(0.6 / DIL)
    assert r1.clients[1].phases_s["compute"] == pytest.approx(0.4 / DIL)  # the rerun only


def test_a_resume_in_round_zero_before_one_client_started_it() -> None:
    """Killed in round 0 when only client 0 had started it: round 0 then opens (its last
    client's first start) after the restart, and client 0's lost step is still cut out."""
    g = GAP
    recs = [_start("main_server", -1, -3.0), _start("client", 0, -2.0), _start("client", 1, -2.0)]
    recs += [
        _span("client", 0, 0, 0, "client_forward", 0.0, 0.2),
        _span("client", 0, 0, 0, "uplink", 0.2, 0.6, 100_000),  # killed here
        _start("main_server", -1, g),
        _start("client", 0, g + 0.5),
        _start("client", 1, g + 0.5),
    ]
    for k in (0, 1):
        recs += _one_step(k, 0, g + 1.0, 0.4)
        recs.append(_span("client", k, 0, -1, "adapter_upload", g + 2.2, g + 2.4, 20_000))
    recs += _close(0, g + 2.5)
    (r0,) = measure_rounds(sorted(recs, key=lambda r: r.t0), DIL)
    assert r0.restarted and not r0.partial
    assert r0.window_s == pytest.approx(1.7 / DIL)
    assert r0.clients[0].uplink_bytes == 100_000  # the rerun's step alone
    assert r0.clients[0].uplink_transfer_s == pytest.approx(0.4 / DIL)


# ------------------------------------------------------------------ report and summary


def test_the_report_counts_a_rerun_round_and_says_what_was_cut(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", resumed_records(True))
    doc = json.loads(write_report(run).report_json.read_text())
    r1 = doc["rounds"][1]
    assert r1["restarted"] is True and r1["partial"] is False
    assert r1["measured_s"] == pytest.approx(0.85)
    assert r1["restart_cut_s"] == pytest.approx(50.0)
    tot = doc["totals"]
    assert tot["measured_s"] == pytest.approx(0.85 + 0.85 + 0.9)  # every round
    assert tot["num_rounds_complete"] == 3 and tot["num_rounds_partial"] == 0
    assert abs(tot["error_pct"]) < 100  # the downtime made it about -98%
    md = (run / "report.md").read_text()
    assert "| 1 (restarted) | 0.850 |" in md
    note = next(n for n in doc["notes"] if n.startswith("Round 1 spans a restart"))
    assert "50.000 s" in note and "counts in the totals" in note


def test_the_report_leaves_a_partial_round_out_of_the_totals(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", resumed_records(False))
    rep = build_report(run)
    r0, r1, r2 = rep["rounds"]
    assert r1["partial"] and r1["complete"]
    tot = rep["totals"]
    assert tot["measured_s"] == pytest.approx(r0["measured_s"] + r2["measured_s"])
    assert tot["predicted_s"] == pytest.approx(r0["predicted_s"] + r2["predicted_s"])
    assert tot["mean_abs_error_pct"] == pytest.approx(
        (abs(r0["error_pct"]) + abs(r2["error_pct"])) / 2
    )
    assert tot["num_rounds_complete"] == 3 and tot["num_rounds_partial"] == 1
    write_report(run)
    md = (run / "report.md").read_text()
    assert "| 1 (restarted, partial: not in totals) |" in md
    assert "1 split by a restart, left out of the totals" in md
    assert any("left out of the totals" in n and n.startswith("Round 1") for n in rep["notes"])


def test_the_summary_wall_time_of_a_resumed_round_leaves_the_downtime_out() -> None:
    """`fedsllm run`'s per-round wall s (dilation 1): the rerun's window, not the
    downtime; a round only partly run again has no wall time, as an unfinished one."""
    whole = summarize(resumed_records(True))
    assert [r.wall_s for r in whole.rounds] == pytest.approx([1.7, 1.7, 1.8])
    assert [r.restarted for r in whole.rounds] == [False, True, False]
    split = summarize(resumed_records(False))
    assert math.isnan(split.rounds[1].wall_s) and split.rounds[1].restarted
    assert split.rounds[2].wall_s == pytest.approx(1.8)


def test_the_run_headline_counts_only_the_rounds_in_the_mean(tmp_path: Path) -> None:
    """`fedsllm run` said "over 3 rounds" when a partial round was left out of the mean."""
    split = write_report(make_run_dir(tmp_path / "split", resumed_records(False)))
    assert (split.num_rounds, split.num_rounds_in_mean) == (3, 2)
    assert split.headline() == (
        f"mean |error| of the delay model {split.mean_abs_error_pct:.1f}% over 2 rounds of 3; "
        "1 incomplete or partial, left out"
    )
    whole = write_report(make_run_dir(tmp_path / "whole", resumed_records(True)))
    assert whole.headline().endswith("% over 3 rounds")
    one = dataclasses.replace(whole, num_rounds=1, num_rounds_in_mean=1)
    assert one.headline().endswith("% over 1 round")


def _loss(k: int, rnd: int, step: int, t: float, loss: float) -> TelemetryRecord:
    rec = _event("client", k, rnd, "train_loss", t, loss=loss, num_tokens=100)
    return dataclasses.replace(rec, step=step)


def test_steps_run_again_after_a_restart_count_once_in_the_loss(tmp_path: Path) -> None:
    """Client 1 trained round 1's step 0 (loss 9.0) before the kill and again after it
    (loss 3.0): the round's train loss and step count were 9.0 and 3.0 averaged with
    client 0's, over three steps; the rerun alone counts."""
    recs = [r for r in resumed_records(True) if r.name != "train_loss"]
    recs += [
        _loss(0, 0, 0, 0.9, 4.0),
        _loss(1, 0, 0, 0.9, 4.0),
        _loss(1, 1, 0, 2.9, 9.0),  # the aborted attempt
        _loss(1, 1, 0, GAP + 1.5, 3.0),
        _loss(0, 1, 0, GAP + 2.1, 5.0),
    ]
    recs.sort(key=lambda r: r.t0)
    assert train_losses(recs) == {0: [4.0, 4.0], 1: [5.0, 3.0]}  # by client
    round1 = summarize(recs).rounds[1]
    assert (round1.train_loss, round1.num_steps, round1.num_clients) == (4.0, 2, 2)
    report = build_report(make_run_dir(tmp_path / "run", recs))
    assert report["rounds"][1]["train_loss"] == pytest.approx(4.0)
    # The loss curve keeps every step that ran, the aborted one too: it is history.
    assert [p["loss"] for p in report["losses"]["train"] if p["round"] == 1] == [9.0, 3.0, 5.0]
