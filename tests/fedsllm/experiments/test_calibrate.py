"""Convergence calibration: the fit on synthetic points, rounds-to-target, the written file,
and the CLI's refusals before any run starts."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedsllm.cli import main
from fedsllm.config import load_scenario
from fedsllm.errors import ConfigError
from fedsllm.experiments.calibrate import (
    CalibrationPoint,
    calibration_scenario,
    fit_convergence,
    fit_points,
    parse_steps,
    point_from_records,
    predicted_rounds,
    rounds_to_target,
    write_calibrated,
)


@pytest.mark.parametrize(
    ("a", "v", "steps"),
    [
        (4.0, 6.0, (1, 2, 4, 8)),
        (1.0, 2.0, (1, 2, 4, 8)),
        (10.0, 0.7, (1, 2, 3)),
        (2.5, 30.0, (2, 5, 10, 20, 40)),
        (3.0, 4.0, (2, 8)),
    ],
)
def test_fit_recovers_known_constants(a: float, v: float, steps: tuple[int, ...]) -> None:
    rounds = predicted_rounds(np.array(steps), a, v)
    fit = fit_convergence(steps, rounds)
    assert fit.a == pytest.approx(a, rel=1e-5)
    assert fit.v == pytest.approx(v, rel=1e-5)
    assert fit.rmse < 1e-6 * max(rounds)
    assert max(abs(r) for r in fit.residuals) < 1e-5 * max(rounds)


def test_fit_with_noise_stays_close() -> None:
    a, v = 4.0, 6.0
    steps = np.array([1, 2, 3, 4, 6, 8, 12, 16])
    rng = np.random.default_rng(0)
    clean = predicted_rounds(steps, a, v)
    noisy = clean * (1 + 0.02 * rng.standard_normal(len(steps)))
    fit = fit_convergence(steps.tolist(), noisy.tolist())
    assert fit.a == pytest.approx(a, rel=0.1)
    assert fit.v == pytest.approx(v, rel=0.1)
    # Residuals are predicted - measured: the noise the fit could not explain, so of the
    # noise's size (2 % of each point) and far above the noiseless fit's.
    exact = fit_convergence(steps.tolist(), clean.tolist())
    assert exact.rmse < 1e-6 and max(abs(r) for r in exact.residuals) < 1e-6
    assert 1e-3 < fit.rmse < 0.05 * float(noisy.max())
    assert all(abs(r) < 0.1 * y for r, y in zip(fit.residuals, noisy, strict=True))


def test_predicted_rounds_formula() -> None:
    # eta(n) = 2^(-n/v): n = v gives eta 1/2 and so rounds 2a.
    assert predicted_rounds(6, 4.0, 6.0) == pytest.approx(8.0)
    assert predicted_rounds(12, 4.0, 6.0) == pytest.approx(4.0 / (1 - 0.25))


def test_fit_needs_two_distinct_step_counts() -> None:
    with pytest.raises(ConfigError) as err:
        fit_convergence([4, 4], [3.0, 3.0])
    assert err.value.path == "--steps"
    with pytest.raises(ConfigError, match="rounds"):
        fit_convergence([1, 2], [3.0, 0.0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,2,4,8", (1, 2, 4, 8)), (" 3 , 1 ", (3, 1)), ("2,4,", (2, 4))],
)
def test_parse_steps(text: str, expected: tuple[int, ...]) -> None:
    assert parse_steps(text) == expected


@pytest.mark.parametrize(
    ("text", "bad"),
    [("1,x", "x"), ("0,2", "0"), ("2,-1", "-1"), ("4", "4"), ("2,2", "2"), ("", "")],
)
def test_parse_steps_refuses(text: str, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_steps(text)
    assert err.value.path == "--steps"
    assert str(err.value.value) == bad


@pytest.mark.parametrize(
    ("losses", "target", "rounds"),
    [
        ({-1: 5.0, 0: 4.0, 1: 3.0, 2: 2.0}, 3.0, 2),
        ({-1: 5.0, 0: 2.9, 1: 3.0}, 3.0, 1),
        ({-1: 5.0, 0: 4.0, 1: 3.5}, 3.0, None),
        ({-1: 2.0, 0: 4.0, 1: 1.0}, 3.0, 2),  # met before training only: not counted
        ({-1: 5.0, 0: math.nan, 1: 2.0}, 3.0, 2),
    ],
)
def test_rounds_to_target(losses: dict[int, float], target: float, rounds: int | None) -> None:
    assert rounds_to_target(losses, target) == rounds


def _val(rnd: int, loss: float) -> dict:
    return {"kind": "event", "name": "val_loss", "round": rnd, "t0": rnd, "extra": {"loss": loss}}


def test_point_from_records() -> None:
    recs = [_val(-1, 5.0), _val(0, 4.0), _val(1, 2.5), _val(2, 2.7)]
    p = point_from_records(4, recs, 3.0, "/r")
    assert (p.num_steps, p.rounds, p.run_dir) == (4, 2, "/r")
    assert (p.initial_val_loss, p.best_val_loss, p.final_val_loss) == (5.0, 2.5, 2.7)
    assert p.note == ""
    missed = point_from_records(1, recs, 1.0, "/r")
    assert missed.rounds is None
    assert "never <= 1" in missed.note


def _point(n: int, rounds: int | None) -> CalibrationPoint:
    return CalibrationPoint(n, rounds, "/r", 5.0, 3.0, 3.0)


def test_fit_points_leaves_out_unreached_runs() -> None:
    a, v = 2.0, 3.0
    exact = predicted_rounds(np.array([2, 4, 8]), a, v)
    pts = [_point(1, None)] + [
        CalibrationPoint(n, r, "/r", 5.0, 3.0, 3.0)  # type: ignore[arg-type]
        for n, r in zip((2, 4, 8), exact.tolist(), strict=True)
    ]
    fit = fit_points(pts, 3.0, 10)
    assert fit.num_steps == (2, 4, 8)
    assert fit.a == pytest.approx(a, rel=1e-5) and fit.v == pytest.approx(v, rel=1e-5)


def test_fit_points_needs_two_that_reached() -> None:
    with pytest.raises(ConfigError) as err:
        fit_points([_point(1, None), _point(2, None), _point(4, 3)], 2.5, 6)
    assert err.value.path == "--target-loss"
    assert "only 1 of 3 runs" in str(err.value) and "n=4" in str(err.value)


def test_calibration_scenario_sets_only_the_run_shape() -> None:
    base = load_scenario(None, ["policy.name='optimal'", "link.backend='token'"])
    sc = calibration_scenario(base, 3, 7, 2.5)
    assert sc.policy.name == "fixed_steps"
    assert (sc.training.num_local_steps, sc.training.num_rounds) == (3, 7)
    assert (sc.training.eval_every, sc.training.target_val_loss) == (1, 2.5)
    assert (sc.link.backend, sc.link.emulate_compute) == ("none", False)
    assert sc.data == base.data and sc.model == base.model and sc.seed == base.seed
    assert sc.convergence == base.convergence


def test_write_calibrated_replaces_only_a_and_v(tmp_path: Path) -> None:
    base = load_scenario(None, ["clients.num_clients=2", "training.batch_size=4"])
    steps = (1, 2, 4)
    fit = fit_convergence(steps, predicted_rounds(np.array(steps), 1.75, 3.25))
    path = write_calibrated(tmp_path / "cal.toml", base, fit)
    text = path.read_text()
    assert text.startswith("# Written by `fedsllm calibrate`")
    loaded = load_scenario(path)
    assert loaded.convergence.a == pytest.approx(1.75, rel=1e-6)
    assert loaded.convergence.v == pytest.approx(3.25, rel=1e-6)
    expected = base.to_dict()
    got = loaded.to_dict()
    expected.pop("convergence"), got.pop("convergence")
    assert got == expected
    assert tomllib.loads(text)["convergence"] == {"a": fit.a, "v": fit.v}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--target-loss", "0"], "--target-loss"),
        (["--target-loss", "nan"], "--target-loss"),
        (["--target-loss", "3", "--steps", "4"], "--steps"),
        (["--target-loss", "3", "--steps", "1,zz"], "zz"),
        (["--target-loss", "3", "--max-rounds", "0"], "--max-rounds"),
        (["--target-loss", "3", "--set", "training.batch_size=0"], "training.batch_size"),
    ],
)
def test_cli_refuses_bad_input_before_running(
    argv: list[str], named: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["calibrate", *argv, "--write", str(tmp_path / "out.toml")])
    assert code == 2
    err = capsys.readouterr().err
    assert named in err
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "out.toml").exists()


def test_cli_refuses_write_into_missing_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["calibrate", "--target-loss", "3", "--write", str(tmp_path / "no" / "x.toml")])
    assert code == 2
    assert "--write" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
