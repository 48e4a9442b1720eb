"""fedsllm.report on synthetic traces with known answers, the CLI's errors, and a real run."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedsllm.config import load_scenario
from fedsllm.report import build_report, write_report
from fedsllm.report.phases import measure_rounds, union_length
from fedsllm.report.predict import (
    RatesInForce,
    error_pct,
    model_client_s,
    rates_in_force,
    transfer_s,
)
from fedsllm.telemetry.records import EventKind, Phase, TelemetryRecord
from tests.fedsllm.report.synthetic import (
    DIL,
    _one_step,
    _span,
    make_run_dir,
    synthetic_records,
)

# --------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("intervals", "lo", "hi", "expected"),
    [
        ([], 0.0, 10.0, 0.0),
        ([(1.0, 2.0)], 0.0, 10.0, 1.0),
        ([(1.0, 3.0), (2.0, 4.0)], 0.0, 10.0, 3.0),  # overlap counts once
        ([(-5.0, 1.0), (9.0, 20.0)], 0.0, 10.0, 2.0),  # clipped to the window
        ([(11.0, 12.0)], 0.0, 10.0, 0.0),
    ],
)
def test_union_length(intervals, lo, hi, expected) -> None:
    assert union_length(intervals, lo, hi) == pytest.approx(expected)


def test_error_pct_and_transfer() -> None:
    assert error_pct(2.0, 2.5) == pytest.approx(25.0)
    assert error_pct(2.0, 1.0) == pytest.approx(-50.0)
    assert math.isnan(error_pct(0.0, 1.0))
    assert transfer_s(1000, math.inf) == 0.0
    assert transfer_s(1000, 8000.0) == pytest.approx(1.0)


def test_measured_windows_phases_and_dilation() -> None:
    rounds = measure_rounds(synthetic_records(), DIL)
    assert [r.round for r in rounds] == [0, 1]  # the final pull (round 2) is no round
    r0, r1 = rounds
    assert r0.complete and r1.complete
    assert r0.start_s == pytest.approx(0.5)  # the run starts with the eval at -1.0 wall
    assert r0.window_s == pytest.approx(1.0)  # 2.0 wall / dilation 2
    assert r0.eval_s == pytest.approx(0.0)
    assert r0.measured_s == pytest.approx(1.0)
    c0 = r0.clients[0]
    assert c0.num_steps == 1
    assert c0.phases_s["compute"] == pytest.approx(0.2)
    assert c0.phases_s["uplink"] == pytest.approx(0.2)
    assert c0.phases_s["server"] == pytest.approx(0.1)
    assert c0.phases_s["downlink"] == pytest.approx(0.1)
    assert c0.phases_s["adapter_upload"] == pytest.approx(0.1)
    assert c0.phases_s["aggregation"] == pytest.approx(0.1)
    assert c0.phases_s["waiting"] == pytest.approx(0.2)
    assert c0.total_s == pytest.approx(1.0)
    assert c0.achieved_uplink_bps == pytest.approx(100_000 * 8 / 0.2)
    assert c0.achieved_downlink_bps == pytest.approx(50_000 * 8 / 0.1)
    assert c0.overrun_s == pytest.approx(0.07)
    assert c0.num_overruns == 2
    assert c0.client_target_s == pytest.approx(0.2)
    assert c0.server_target_s == pytest.approx(0.08)
    assert r0.clients[1].phases_s["uplink"] == pytest.approx(0.3)
    # round 1 starts at round 0's aggregation end; the eval [2.0, 2.4] wall is cut out
    assert r1.start_s == pytest.approx(1.5)
    assert r1.window_s == pytest.approx(1.1)
    assert r1.eval_s == pytest.approx(0.2)
    assert r1.measured_s == pytest.approx(0.9)
    assert r1.clients[0].eval_s == pytest.approx(0.2)
    assert r1.clients[0].total_s == pytest.approx(0.9)
    assert r1.clients[1].total_s == pytest.approx(1.1)  # client 1 did not evaluate
    assert r1.clients[0].phases_s["global_download"] == pytest.approx(0.1)
    assert r1.clients[0].start_s == pytest.approx(0.3)  # eval + download before training


def test_round_zero_opens_when_the_last_client_starts(tmp_path: Path) -> None:
    """Client 1 starts round 0 late (process start-up): the window opens at its start, the
    skew (evaluation inside it cut out) is recorded, and the report says so."""
    late = 0.6  # wall seconds
    recs = [r for r in synthetic_records() if not (r.client == 1 and r.round == 0 and r.is_span)]
    recs += _one_step(1, 0, late, 0.2)  # ends at late + 1.0 wall, before aggregation
    recs.append(_span("client", 0, -1, -1, "eval", 0.1, 0.3))  # eval inside the skew
    recs.sort(key=lambda r: r.t0)
    r0, r1 = measure_rounds(recs, DIL)
    assert r0.start_s == pytest.approx((1.0 + late) / DIL)  # origin: the eval at -1.0 wall
    assert r0.window_s == pytest.approx((2.0 - late) / DIL)
    assert r0.measured_s == pytest.approx((2.0 - late) / DIL)  # the eval ends before 0.6
    assert r0.startup_skew_s == pytest.approx((late - 0.2) / DIL)
    assert r1.startup_skew_s == 0.0 and r1.start_s == pytest.approx(1.5)
    assert r0.clients[1].start_s == pytest.approx(0.0)
    assert r0.clients[0].start_s == pytest.approx(-late / DIL)
    run = make_run_dir(tmp_path / "run", recs)
    doc = json.loads(write_report(run).report_json.read_text())
    assert doc["startup_skew_s"] == pytest.approx((late - 0.2) / DIL)
    assert doc["rounds"][0]["measured_s"] == pytest.approx((2.0 - late) / DIL)
    assert "start-up skew" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    ("late", "uplink_in_window_s", "downlink_in_window_s"),
    [
        (0.5, 0.05, 0.1),  # client 0's uplink [0.2, 0.6] wall straddles the window start
        (0.9, 0.0, 0.05),  # its uplink is all before it, its downlink [0.8, 1.0] straddles
    ],
)
def test_achieved_rates_count_whole_transfers_when_round_zero_opens_late(
    late, uplink_in_window_s, downlink_in_window_s
) -> None:
    """Round 0 opens when the last client starts: an earlier client's transfer spans are
    clipped out of its phases (which still add up to the window), but its achieved rate
    is bytes over the whole spans, not all the bytes over the clipped part (the report
    showed 50.9 Mbit/s achieved against 15.6 allocated)."""
    recs = [r for r in synthetic_records() if not (r.client == 1 and r.round == 0 and r.is_span)]
    recs += _one_step(1, 0, late, 0.1)
    recs.sort(key=lambda r: r.t0)
    r0 = measure_rounds(recs, DIL)[0]
    assert r0.start_s == pytest.approx((1.0 + late) / DIL)  # client 1's start
    c0 = r0.clients[0]
    assert c0.phases_s["uplink"] == pytest.approx(uplink_in_window_s)
    assert c0.phases_s["downlink"] == pytest.approx(downlink_in_window_s)
    assert c0.total_s == pytest.approx(r0.window_s)
    # synthetic uplink: 100 kB in 0.4 wall = 0.2 emulated s; downlink 50 kB in 0.1 s
    assert c0.achieved_uplink_bps == pytest.approx(100_000 * 8 / 0.2)
    assert c0.achieved_downlink_bps == pytest.approx(50_000 * 8 / 0.1)
    assert c0.uplink_transfer_s == pytest.approx(0.2)


def test_waiting_for_the_round_to_close_is_waiting_not_download(tmp_path: Path) -> None:
    """A client's wait_global span (its upload until the fed server starts sending the
    next global adapter) is drawn as waiting, changes no phase or prediction (waiting is
    the rest of the window, never a transfer), and global_download stays the transfer."""
    from fedsllm.report.figures import _timeline_rows

    base = synthetic_records()
    waits = [
        _span("client", 0, 0, -1, "wait_global", 1.4, 2.0),  # from its upload to the close
        _span("client", 1, 0, -1, "wait_global", 1.6, 2.05),
        _span("client", 1, 1, -1, "wait_global", 3.5, 4.25),
    ]
    recs = sorted(base + waits, key=lambda r: r.t0)
    for with_waits, without in zip(
        measure_rounds(recs, DIL), measure_rounds(base, DIL), strict=True
    ):
        assert with_waits.to_dict() == without.to_dict()
    r0, r1 = measure_rounds(recs, DIL)
    assert r0.clients[1].phases_s["waiting"] == pytest.approx((2.0 - 1.6 - 0.2) / DIL)
    assert r1.clients[1].phases_s["global_download"] == pytest.approx(0.1 / DIL)
    assert sum(r1.clients[1].phases_s.values()) == pytest.approx(r1.window_s)
    run = make_run_dir(tmp_path / "run", recs)
    rep = build_report(run)
    ref = build_report(make_run_dir(tmp_path / "ref", base))
    assert [r["predicted_s"] for r in rep["rounds"]] == [r["predicted_s"] for r in ref["rounds"]]
    assert all(c["predicted"]["phases_s"]["waiting"] == 0.0 for c in rep["rounds"][0]["clients"])
    rows = _timeline_rows(recs, rep["run_start_unix_s"], DIL)
    origin_s = 1.0 / DIL  # the run starts with the eval at -1.0 wall
    bars = [x for bar in rows["client 1"]["waiting"] for x in bar]
    assert bars == pytest.approx([origin_s + 0.8, 0.225, origin_s + 1.75, 0.375])
    (download,) = rows["client 1"]["global_download"]  # round 1's transfer alone
    assert download == pytest.approx((origin_s + 1.0, 0.05))
    assert "waiting" in rows["client 0"]
    write_report(run)  # draws the waiting bars


def _with_downlink_rate(bps: float | None) -> list[TelemetryRecord]:
    """The synthetic trace with every training step recording the downlink rate it asked
    the main server for."""
    recs = [r for r in synthetic_records() if r.phase is not Phase.WAIT_REPLY]
    for r in synthetic_records():
        if r.phase is Phase.WAIT_REPLY:
            recs.append(replace(r, values={} if bps is None else {"downlink_bps": bps}))
    return sorted(recs, key=lambda r: r.t0)


def test_report_says_the_default_downlink_is_not_paced(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", _with_downlink_rate(0.0))
    result = write_report(run)
    doc = json.loads(result.report_json.read_text())
    for r in doc["rounds"]:
        for c in r["clients"]:
            assert c["downlink_paced"] is False and c["downlink_bps"] is None
    # Round 1's allocation says 1.6 Mbit/s, but the steps asked for no pacing: what the
    # client recorded wins.
    assert doc["rounds"][1]["clients"][0]["rates"]["downlink_bps"] == 1.6e6
    md = result.report_md.read_text()
    assert "- downlink (activation gradients, global adapter): unshaped, not paced" in md
    assert "The downlink was not paced (channel.downlink_bps is 0, the default)" in md
    assert "| downlink paced at |" in md


def test_report_states_the_downlink_rate_used(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", _with_downlink_rate(1.6e6))
    rep = build_report(run)
    assert all(c["downlink_paced"] for r in rep["rounds"] for c in r["clients"])
    assert rep["rounds"][0]["clients"][0]["downlink_bps"] == 1.6e6
    assert not any("downlink was" in n for n in rep["notes"])
    write_report(run)
    md = (run / "report.md").read_text()
    assert "global adapter): paced at 1.600 Mbit/s" in md
    # An older trace without the recorded rate falls back to the rates in force: round 0's
    # allocation leaves the downlink unshaped, round 1's paces it at 1.6 Mbit/s.
    old = build_report(make_run_dir(tmp_path / "old", _with_downlink_rate(None)))
    assert [c["downlink_paced"] for r in old["rounds"] for c in r["clients"]] == [
        False,
        False,
        True,
        True,
    ]
    assert any("paced in only 2 of 4 client-rounds" in n for n in old["notes"])


def test_round_done_ends_a_round_without_aggregation() -> None:
    recs = [r for r in synthetic_records() if r.phase is not Phase.AGGREGATION]
    r0, r1 = measure_rounds(recs, DIL)
    assert r0.complete and r1.complete
    assert r0.end_s == pytest.approx(1.5) and r1.end_s == pytest.approx(2.6)  # round_done
    assert r0.aggregation_s == 0.0
    no_end = [r for r in recs if not (r.event is EventKind.ROUND_DONE and r.round == 1)]
    assert not measure_rounds(no_end, DIL)[1].complete


def test_rates_in_force_picks_newest_version_for_the_round() -> None:
    rates = rates_in_force(synthetic_records(), 2, [0, 1], "token")
    assert rates[(0, 1)].uplink_bps == 1e6
    assert math.isinf(rates[(0, 1)].downlink_bps)  # 0 = unshaped
    assert rates[(1, 0)].version == 2  # version 3 is for round 2
    assert rates[(1, 0)].downlink_bps == 1.6e6
    assert rates[(1, 0)].source == "allocation"
    none = rates_in_force(synthetic_records(), 2, [0], "none")
    assert math.isinf(none[(0, 0)].uplink_bps) and none[(0, 0)].source == "unshaped_backend"
    fixed = rates_in_force(synthetic_records(with_allocations=False), 2, [0], "token")
    assert fixed[(0, 0)].source == "configured" and math.isinf(fixed[(0, 0)].uplink_bps)


def test_report_predicted_delay_and_error(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", synthetic_records())
    rep = build_report(run)
    r0, r1 = rep["rounds"]
    c0, c1 = r0["clients"]
    # client 0: compute 0.2 (targets) + server 0.08 + uplink 1e5*8/2e6 + adapter 2e4*8/2e6
    # + t_agg 0.01; downlink unshaped
    assert c0["predicted"]["phases_s"]["uplink"] == pytest.approx(0.4)
    assert c0["predicted"]["phases_s"]["adapter_upload"] == pytest.approx(0.08)
    assert c0["predicted"]["phases_s"]["downlink"] == 0.0
    assert c0["predicted"]["total_s"] == pytest.approx(0.77)
    # client 1 at 1 Mbit/s: 0.2 + 0.08 + 0.8 + 0.16 + 0.01
    assert c1["predicted"]["total_s"] == pytest.approx(1.25)
    assert r0["predicted_s"] == pytest.approx(1.25)
    assert r0["measured_s"] == pytest.approx(1.0)
    assert r0["error_pct"] == pytest.approx(25.0)
    assert r0["controller_predicted_s"] == pytest.approx(0.5)
    assert r0["num_overruns"] == 2 and r0["overrun_s"] == pytest.approx(0.07)
    # round 1: 2 Mbit/s up, 1.6 Mbit/s down for both; client 0 downloads 2e4 B globally
    p = r1["clients"][0]["predicted"]["phases_s"]
    assert p["downlink"] == pytest.approx(50_000 * 8 / 1.6e6)
    assert p["global_download"] == pytest.approx(20_000 * 8 / 1.6e6)
    expected = 0.2 + 0.08 + 0.4 + 0.25 + 0.08 + 0.1 + 0.01
    assert r1["predicted_s"] == pytest.approx(expected)
    assert r1["error_pct"] == pytest.approx((expected - 0.9) / 0.9 * 100)
    assert r1["train_loss"] == pytest.approx(3.0)
    assert r1["val_loss"] == pytest.approx(3.0)
    assert rep["losses"]["initial_val_loss"] == pytest.approx(5.0)
    tot = rep["totals"]
    assert tot["measured_s"] == pytest.approx(1.9)
    assert tot["num_rounds_complete"] == 2
    assert tot["eval_s"] == pytest.approx(0.5 + 0.2)
    assert rep["link_stats"][0]["achieved_bps"] == pytest.approx(200_000 * 8 / 0.8)
    assert any("time_dilation = 2" in n for n in rep["notes"])


def test_report_without_allocations_predicts_no_transfer_time(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", synthetic_records(with_allocations=False))
    rep = build_report(run)
    r0 = rep["rounds"][0]
    for c in r0["clients"]:
        ph = c["predicted"]["phases_s"]
        assert ph["uplink"] == ph["downlink"] == ph["adapter_upload"] == 0.0
        assert c["rates"]["source"] == "configured"
    assert r0["predicted_s"] == pytest.approx(0.2 + 0.08 + 0.01)
    assert math.isnan(r0["controller_predicted_s"])


def test_report_without_compute_emulation_uses_measured_compute(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", synthetic_records(), "link.emulate_compute=false")
    c0 = build_report(run)["rounds"][0]["clients"][0]
    assert c0["predicted"]["compute_source"] == "measured"
    assert c0["predicted"]["phases_s"]["compute"] == pytest.approx(0.2)
    assert c0["predicted"]["phases_s"]["server"] == pytest.approx(0.1)


def test_model_client_s_matches_predict_round_delay() -> None:
    from fedsllm.delay.inputs import delay_inputs
    from fedsllm.delay.rates import predict_round_delay, rate_bps
    from fedsllm.model.counts import count_scenario

    scenario = load_scenario(
        None, ["clients.num_clients=3", "data.seq_len=32", "devices.aggregation_s=0.02"]
    )
    counts = count_scenario(scenario)
    inputs = delay_inputs(scenario, 0, counts)
    shares = np.full(3, scenario.channel.bandwidth_hz / 3)
    ref = predict_round_delay(inputs, shares, 4)
    up = rate_bps(shares, inputs.snr_hz)
    for k in range(3):
        rates = RatesInForce(float(up[k]), math.inf, "allocation")
        grad_bits = 8.0 * counts.gradient_bytes * scenario.training.batch_size
        got = model_client_s(inputs, k, 4, rates, grad_bits)
        assert got == pytest.approx(float(ref.client_round_s[k]), rel=1e-12)


def test_write_report_files_are_valid(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", synthetic_records())
    result = write_report(run)
    assert result.report_md.read_text().startswith("# FedsLLM run report")
    doc = json.loads(result.report_json.read_text(), parse_constant=_reject_constant)
    assert doc["format"] == "fedsllm.report/1"
    assert doc["rounds"][0]["error_pct"] == pytest.approx(25.0)
    assert doc["rounds"][0]["clients"][0]["rates"]["downlink_bps"] is None  # unshaped
    assert len(doc["figures"]) == 3 and len(set(doc["figures"])) == 3
    on_disk = {p.name for p in run.glob("*.png")}
    assert set(doc["figures"]) == on_disk  # every named figure exists, none unnamed
    for name in doc["figures"]:
        _check_png(run / name)
    assert doc["startup_skew_s"] == 0.0  # both clients start round 0 together
    assert result.mean_abs_error_pct == pytest.approx((25.0 + abs((1.12 - 0.9) / 0.9 * 100)) / 2)


def _reject_constant(name: str) -> float:
    raise AssertionError(f"report.json holds {name}: not strict JSON")


def _check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 400
    assert float(image[..., :3].std()) > 0.01  # something was drawn


# --------------------------------------------------------------------- CLI


def test_cli_report_on_missing_run_dir_exits_2(tmp_path: Path, capsys) -> None:
    from fedsllm.cli import EXIT_BAD_INPUT, main

    assert main(["report", str(tmp_path / "nowhere")]) == EXIT_BAD_INPUT
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == EXIT_BAD_INPUT
    assert "scenario.json" in capsys.readouterr().err


def test_cli_report_on_run_without_trace_exits_2(tmp_path: Path, capsys) -> None:
    from fedsllm.cli import EXIT_BAD_INPUT, main

    run = make_run_dir(tmp_path / "run", [])
    assert main(["report", str(run)]) == EXIT_BAD_INPUT
    assert "trace/*.jsonl" in capsys.readouterr().err


def test_a_relative_run_dir_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run_dir(tmp_path / "run", synthetic_records())
    monkeypatch.chdir(tmp_path)
    doc = json.loads(write_report("run").report_json.read_text())
    assert doc["run_dir"] == str(run.resolve())


def test_cli_report_prints_rounds(tmp_path: Path, capsys) -> None:
    from fedsllm.cli import main

    run = make_run_dir(tmp_path / "run", synthetic_records())
    assert main(["report", str(run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["num_rounds_complete"] == 2
    assert Path(out["report_md"]).is_file()


def test_cli_report_text_marks_an_unfinished_round_as_report_md_does(
    tmp_path: Path, capsys
) -> None:
    from fedsllm.cli import main
    from fedsllm.telemetry.records import EventKind, Phase

    records = synthetic_records()
    last = max(r.round for r in records if r.event is EventKind.ROUND_DONE)

    def ends_round(r) -> bool:  # what closes a round (phases._round_ends)
        return r.event is EventKind.ROUND_DONE or r.phase is Phase.AGGREGATION

    cut = [r for r in records if not (ends_round(r) and r.round == last)]
    run = make_run_dir(tmp_path / "run", cut)
    assert main(["report", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rounds: 1 complete of 2"
    rows = [line.split() for line in lines[2:4]]
    assert [row[0] for row in rows] == ["0", str(last)]
    assert lines[2].rstrip().endswith("%")  # a finished round: no mark
    assert lines[3].endswith("  (incomplete)")
    assert f"| {last} (incomplete) |" in (run / "report.md").read_text()


# --------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_write_report_on_real_run(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "run"
    tiny = [
        "model.pretrain_steps=0",
        "data.seq_len=32",
        "data.num_train_samples=96",
        "data.num_val_samples=16",
        "training.batch_size=4",
        "training.num_val_batches=2",
        'policy.name="fixed_steps"',  # exactly --rounds rounds, whatever the default policy
    ]
    args = [
        sys.executable,
        "-m",
        "fedsllm",
        "run",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    for item in tiny:
        args += ["--set", item]
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", FEDSLLM_CACHE=str(tmp_path / "cache")
    )
    proc = subprocess.run(
        args, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = write_report(out)
    assert result.num_rounds == 2
    for path in (result.report_md, result.report_json, *result.figures):
        assert path.is_file()
    for path in result.figures:
        _check_png(path)
    doc = json.loads(result.report_json.read_text(), parse_constant=_reject_constant)
    assert [r["round"] for r in doc["rounds"]] == [0, 1]
    for r in doc["rounds"]:
        assert r["complete"]
        assert r["measured_s"] > 0
        assert r["predicted_s"] is not None and r["predicted_s"] >= 0
        assert [c["num_steps"] for c in r["clients"]] == [2, 2]
        assert r["train_loss"] is not None
    assert doc["losses"]["initial_val_loss"] is not None
    assert "## Rounds" in result.report_md.read_text()


def test_the_delay_figures_legend_sits_below_the_bars_it_explains() -> None:
    """Inside the axes it covered the first rounds' bars (seen on the default run)."""
    from fedsllm.report.figures import delay_figure

    rounds = [
        {
            "round": r,
            "measured_s": 1.0,
            "predicted_s": 1.05,
            "model_s": 0.9,
            "controller_predicted_s": 1.0,
            "error_pct": 5.0,
        }
        for r in range(37)
    ]
    fig = delay_figure({"rounds": rounds})
    fig.savefig(io.BytesIO(), format="png")  # laid out as the report writes it
    (ax,) = fig.axes
    (legend,) = fig.legends
    box = legend.get_window_extent()
    drawn = ax.get_tightbbox()  # bars, ticks, tick labels and axis labels
    assert box.y1 <= drawn.y0  # wholly below all of it
    figure = fig.bbox
    assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and box.y0 >= figure.y0


def test_a_run_stopped_early_says_how_many_rounds_were_planned(tmp_path: Path, capsys) -> None:
    """`fedsllm report` on a 37-round plan interrupted after round 0 said "1 complete of
    2", as if the run had been two rounds long."""
    from fedsllm.cli import main
    from tests.fedsllm.report.synthetic import _event

    plan = _event("fed_server", -1, -1, "plan", -5.0, num_rounds=37, num_local_steps=1)
    run = make_run_dir(tmp_path / "run", sorted([plan, *synthetic_records()], key=lambda r: r.t0))
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "rounds: 2 complete of 2 started (37 planned)"
    assert "- rounds: 2 complete of 2 started (37 planned)" in (run / "report.md").read_text()
    doc = json.loads((run / "report.json").read_text())
    assert doc["totals"]["num_rounds_planned"] == 37


def test_a_host_that_could_not_keep_up_gets_a_hint_to_dilate_time(tmp_path: Path) -> None:
    """A 12-client run ended at 43% error with 3.1 s of overruns, mostly the main
    server's, and nothing told the user that time dilation was the remedy."""
    from fedsllm.report import ReportResult

    def result(overrun_s: float) -> ReportResult:
        return ReportResult(tmp_path, tmp_path / "r.md", tmp_path / "r.json", (), 3, 43.1, 3,
                            measured_s=7.0, overrun_s=overrun_s)  # fmt: skip

    assert result(0.3).overrun_hint(1.0, 12) is None  # 4%: within what a host adds
    hint = result(3.1).overrun_hint(1.0, 12)
    assert hint is not None and hint.startswith("the emulated devices ran 3.10 s late in all (44%")
    assert hint.endswith("--set link.time_dilation=4")  # 0.3 x K, rounded up
    assert result(3.1).overrun_hint(8.0, 12).endswith("--set link.time_dilation=16")
