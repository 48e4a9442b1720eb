"""Issue 8: absurd and infeasible baselines named in plan and sweep, N >= 1, sweep's out dir."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from fedsllm.cli import main
from fedsllm.cli.sweep import plot_ceiling, write_png
from fedsllm.config import load_dict
from fedsllm.delay.policies import ABSURD_FACTOR
from fedsllm.delay.sweeps import sweep

NEGATIVE_PERCENT = re.compile(r"-\d[\d.,]*%")


def test_plan_json_flags_proportional_instead_of_a_percentage(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["plan", "--clients", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["absurd_factor"] == ABSURD_FACTOR
    pols = doc["policies"]
    prop = pols["proportional"]
    t_opt = pols["optimal"]["total_delay_s"]
    assert prop["verdict"] == "absurd"
    assert prop["delay_ratio_to_optimal"] == pytest.approx(prop["total_delay_s"] / t_opt)
    assert prop["delay_ratio_to_optimal"] > ABSURD_FACTOR
    assert prop["verdict_label"].startswith("absurd (x") and "the optimum" in prop["verdict_label"]
    assert prop["reduction_vs_equal"] is None and prop["optimal_less_delay"] is None
    assert "of the band" in prop["verdict_reason"]
    equal = pols["equal"]
    assert equal["verdict"] == "ok" and equal["verdict_label"] == ""
    assert equal["optimal_less_delay"] == pytest.approx(doc["optimal_reduction_vs_equal"])
    assert 0.0 < equal["optimal_less_delay"] < 1.0


def test_plan_table_names_absurd_baselines(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--clients", "10"]) == 0
    out = capsys.readouterr().out
    assert "absurd (x" in out and "Flagged baselines" in out
    assert "optimal: % less delay" in out and "% less delay than equal" in out
    assert not NEGATIVE_PERCENT.search(out), NEGATIVE_PERCENT.search(out)


def test_plan_refuses_fewer_than_one_round(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--set", "convergence.a=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "convergence.a" in err and "fedsllm calibrate" in err


def test_sweep_default_out_is_under_runs_and_flags_in_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--param", "num_clients", "--values", "10", "--seeds", "1"]
    assert main(argv) == 0
    assert not (tmp_path / "sweep_out").exists()
    (out,) = (tmp_path / "runs").glob("sweep-default-*")
    with open(out / "sweep_num_clients.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status_proportional"].startswith("absurd (x")
    assert float(row["T_proportional_over_optimal"]) > ABSURD_FACTOR
    assert row["status_equal"] == "ok" and row["status_optimal"] == "ok"
    assert 0.0 < float(row["reduction_optimal_vs_equal"]) < 1.0
    assert (out / "sweep_num_clients.png").exists()
    printed = capsys.readouterr().out
    assert "proportional absurd at 10 (x" in printed and str(out) in printed


def test_sweep_plot_keeps_absurd_baselines_off_the_scale(tmp_path: Path) -> None:
    points = sweep(
        load_dict(None),
        "num_clients",
        [5, 10],
        num_seeds=1,
        policies=("optimal", "equal", "proportional"),
    )
    bottom, top = write_png(tmp_path / "s.png", points)
    assert top / 1.6 == pytest.approx(plot_ceiling(points))
    assert all(pt.status["proportional"] == "absurd" for pt in points)
    assert top < max(pt.mean_delay_s["proportional"] for pt in points)
    for pt in points:
        for policy in ("optimal", "equal"):
            assert bottom < pt.mean_delay_s[policy] < top / 1.6
