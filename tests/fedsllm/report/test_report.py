"""fedsllm.report on synthetic traces with known answers, the CLI's errors, and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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

T0 = 1000.0
DIL = 2.0
"""Synthetic traces are written in wall seconds with time dilation 2: every wall
duration below is twice its emulated value."""


def _span(
    role: str,
    client: int,
    rnd: int,
    step: int,
    name: str,
    t0: float,
    t1: float,
    nbytes: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "kind": "span",
        "role": role,
        "client": client,
        "round": rnd,
        "step": step,
        "name": name,
        "t0": T0 + t0,
        "t1": T0 + t1,
        "bytes": nbytes,
        "extra": extra or {},
    }


def _event(role: str, client: int, rnd: int, name: str, t: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "event",
        "role": role,
        "client": client,
        "round": rnd,
        "step": -1,
        "name": name,
        "t0": T0 + t,
        "t1": T0 + t,
        "bytes": 0,
        "extra": extra,
    }


def _device(target_s: float, overrun_s: float = 0.0) -> dict[str, Any]:
    return {
        "device": {
            "label": "x",
            "flops": 1e6,
            "target_s": target_s,
            "compute_s": target_s + overrun_s,
            "padded_s": 0.0,
            "overrun_s": overrun_s,
            "done": True,
        }
    }


def _one_step(
    k: int,
    rnd: int,
    t: float,
    uplink_wall: float,
    *,
    client_overrun: float = 0.0,
    server_overrun: float = 0.0,
) -> list[dict[str, Any]]:
    """One local iteration starting at wall offset t: forward 0.2, uplink `uplink_wall`,
    server 0.2 + downlink 0.2 inside wait_reply, backward 0.2 (wall seconds)."""
    u = t + 0.2 + uplink_wall
    return [
        _span("client", k, rnd, 0, "client_forward", t, t + 0.2, extra=_device(0.1)),
        _span("client", k, rnd, 0, "uplink", t + 0.2, u, 100_000),
        _span("client", k, rnd, 0, "wait_reply", u, u + 0.4, 50_000),
        _span(
            "main_server",
            k,
            rnd,
            0,
            "server_compute",
            u,
            u + 0.2,
            extra={**_device(0.08, server_overrun), "mode": "train", "loss": 1.0},
        ),
        _span("main_server", k, rnd, 0, "downlink", u + 0.2, u + 0.4, 50_000),
        _span(
            "client",
            k,
            rnd,
            0,
            "client_backward",
            u + 0.4,
            u + 0.6,
            extra=_device(0.1, client_overrun),
        ),
        _event("client", k, rnd, "train_loss", u + 0.6, loss=2.0 + rnd, num_tokens=10),
    ]


def _alloc(k: int, rnd: int, version: int, up: float, down: float, t: float) -> dict[str, Any]:
    return _event(
        "fed_server",
        k,
        rnd,
        "allocation",
        t,
        version=version,
        round=rnd,
        client_id=k,
        policy="optimal",
        bandwidth_hz=1e6,
        share=0.5,
        uplink_bps=up,
        downlink_bps=down,
        num_local_steps=1,
        eta=0.5,
        predicted_round_s=0.5,
        predicted_total_s=1.0,
        issued_unix_s=T0 + t,
        num_rounds=2,
    )


def synthetic_records(with_allocations: bool = True) -> list[dict[str, Any]]:
    """Two clients, two rounds, one local iteration each (wall seconds, dilation 2).

    Round 0: window [0, 2.0] wall (both clients start at 0; aggregation [1.8, 2.0]).
    Round 1: window [2.0, 4.2] wall; eval on client 0 in [2.0, 2.4] is cut out.
    """
    recs: list[dict[str, Any]] = [
        _span("client", 0, -1, -1, "eval", -1.0, 0.0),  # before the first round: no overlap
        _event("client", 0, -1, "val_loss", 0.0, loss=5.0),
    ]
    # round 0: client 0 uplink 0.4 wall, client 1 uplink 0.6 wall
    recs += _one_step(0, 0, 0.0, 0.4, client_overrun=0.05, server_overrun=0.02)
    recs.append(_span("client", 0, 0, -1, "adapter_upload", 1.2, 1.4, 20_000))
    recs += _one_step(1, 0, 0.0, 0.6)
    recs.append(_span("client", 1, 0, -1, "adapter_upload", 1.4, 1.6, 20_000))
    recs.append(_span("fed_server", -1, 0, -1, "aggregation", 1.8, 2.0, 20_000))
    recs.append(_event("fed_server", -1, 0, "round_done", 2.0, num_clients=2))
    # round 1: client 0 evaluates first, then downloads and trains
    recs.append(_span("client", 0, 0, -1, "eval", 2.0, 2.4))
    recs.append(_event("client", 0, 0, "val_loss", 2.4, loss=4.0))
    recs.append(_span("client", 0, 1, -1, "global_download", 2.4, 2.6, 20_000))
    recs += _one_step(0, 1, 2.6, 0.4)
    recs.append(_span("client", 0, 1, -1, "adapter_upload", 3.8, 4.0, 20_000))
    recs.append(_span("client", 1, 1, -1, "global_download", 2.0, 2.1, 20_000))
    recs += _one_step(1, 1, 2.1, 0.4)
    recs.append(_span("client", 1, 1, -1, "adapter_upload", 3.3, 3.5, 20_000))
    recs.append(_span("fed_server", -1, 1, -1, "aggregation", 4.0, 4.2, 20_000))
    recs.append(_event("fed_server", -1, 1, "round_done", 4.2, num_clients=2))
    recs.append(_event("client", 0, 1, "val_loss", 4.6, loss=3.0))
    recs.append(_span("client", 0, 2, -1, "global_download", 4.2, 4.3, 20_000))  # final pull
    recs.append(
        _event(
            "client",
            0,
            -1,
            "link_stats",
            5.0,
            direction="up",
            num_bytes=240_000,
            num_chunks=4,
            busy_s=0.8,
            shaped_bytes=200_000,
        )
    )
    if with_allocations:
        recs += [
            _alloc(0, 0, 1, 2e6, 0.0, -0.5),
            _alloc(1, 0, 1, 1e6, 0.0, -0.5),
            _alloc(0, 1, 2, 2e6, 1.6e6, 1.9),
            _alloc(1, 1, 2, 2e6, 1.6e6, 1.9),
            _alloc(0, 2, 3, 4e6, 0.0, 4.1),  # for round 2: must not apply to round 1
            _alloc(1, 2, 3, 4e6, 0.0, 4.1),
        ]
    return sorted(recs, key=lambda r: r["t0"])


def make_run_dir(root: Path, records: list[dict[str, Any]], *overrides: str) -> Path:
    scenario = load_scenario(
        None,
        [
            "clients.num_clients=2",
            f"link.time_dilation={DIL}",
            "link.emulate_compute=true",
            'link.backend="token"',
            "devices.aggregation_s=0.01",
            "training.batch_size=4",
            "data.seq_len=32",
            "model.pretrain_steps=0",
            *overrides,
        ],
    )
    (root / "trace").mkdir(parents=True)
    doc = {"scenario_hash": "synthetic", **scenario.to_dict()}
    (root / "scenario.json").write_text(json.dumps(doc))
    by_role: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        name = rec["role"] if rec["role"] != "client" else f"client_{rec['client']}"
        by_role.setdefault(name, []).append(rec)
    for name, recs in by_role.items():
        with open(root / "trace" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec) + "\n")
    return root


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
    assert sorted(doc["figures"]) == sorted(p.name for p in result.figures)
    assert len(result.figures) == 3
    for path in result.figures:
        _check_png(path)
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


def test_cli_report_prints_rounds(tmp_path: Path, capsys) -> None:
    from fedsllm.cli import main

    run = make_run_dir(tmp_path / "run", synthetic_records())
    assert main(["report", str(run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["num_rounds_complete"] == 2
    assert Path(out["report_md"]).is_file()


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
