"""Convergence calibration: the fit on synthetic points, rounds-to-target, the written file,
and the CLI's refusals before any run starts."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedsllm.cli import main
from fedsllm.config import ScenarioConfig, load_scenario
from fedsllm.delay.rates import global_rounds
from fedsllm.errors import ConfigError
from fedsllm.experiments.calibrate import (
    V_BOUNDS,
    CalibrationPoint,
    calibration_scenario,
    constant_problems,
    diagnose_calibration,
    fit_convergence,
    fit_points,
    parse_steps,
    point_from_records,
    predicted_rounds,
    rounds_to_target,
    write_calibrated,
)
from fedsllm.telemetry.records import TelemetryRecord, make_record


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


def _val(rnd: int, loss: float) -> TelemetryRecord:
    return make_record(
        "event",
        "val_loss",
        "client",
        source_client=0,
        client=0,
        round=rnd,
        step=-1,
        t0=rnd,
        t1=rnd,
        bytes=0,
        extra={"loss": float(loss)},
    )


def test_point_from_records() -> None:
    recs = [_val(-1, 5.0), _val(0, 4.0), _val(1, 2.5), _val(2, 2.7)]
    p = point_from_records(4, recs, 3.0, "/r")
    assert (p.num_steps, p.rounds, p.run_dir) == (4, 2, "/r")
    assert (p.initial_val_loss, p.best_val_loss, p.final_val_loss) == (5.0, 2.5, 2.7)
    assert p.note == ""
    assert p.val_curve == (4.0, 2.5, 2.7)
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
    result = fit_points(pts, 3.0, 10)
    assert result.usable and result.problems == () and result.at_bound == ()
    assert result.used_steps == (2, 4, 8) and result.rounds[0] is None
    fit = result.fit
    assert fit is not None and fit.num_steps == (2, 4, 8)
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
        # Fields calibrate sets itself: a --set of one was dropped in silence.
        (["--target-loss", "3", "--set", "policy.name='equal'"], "policy.name: is set by"),
        (["--target-loss", "3", "--set", "training={eval_every=0}"], "training.eval_every"),
        (["--target-loss", "3", "--set", "link.backend='tc'"], "link.backend: is set by"),
        (["--target-loss", "3", "--set", "training.num_rounds=5"], "--max-rounds"),
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


# ------------------------------------------------ degenerate fits (issue 8, item 4)


def test_issue_repro_fit_runs_to_a_bound_with_zero_rmse_and_is_refused() -> None:
    # What `calibrate --target-loss 2.2` wrote: rounds x n constant (rounds follow the
    # total local steps) is a / (1 - 2^(-n/v)) only as v -> inf, so the bounded fit
    # ran v to its bound with a ~ n rounds ln2 / v and an rmse of zero.
    fit = fit_convergence([1, 2, 4, 8], [8.0, 4.0, 2.0, 1.0])
    assert fit.v == pytest.approx(V_BOUNDS[1]) and fit.a < 1e-3 and fit.rmse < 1e-3
    points = [_point(n, r) for n, r in zip((1, 2, 4, 8), (8, 4, 2, 1), strict=True)]
    with pytest.raises(ConfigError) as err:
        fit_points(points, 2.2, 10)
    assert err.value.path == "--steps"
    assert "1/n" in str(err.value) and "rounds x n = 8, 8, 8, 8" in str(err.value)
    assert "1,2,4,8,16,32" in str(err.value)


def _points(steps: tuple[int, ...], rounds: tuple[int | None, ...]) -> list[CalibrationPoint]:
    return [_point(n, r) for n, r in zip(steps, rounds, strict=True)]


@pytest.mark.parametrize(
    ("steps", "rounds", "flag", "phrase"),
    [
        ((1, 2, 4, 8), (None, None, None, None), "--target-loss", "no run reached it (0 of 4)"),
        ((1, 2, 4), (None, None, 3), "--target-loss", "only 1 of 3 runs reached it"),
        ((4, 4), (2, 3), "--steps", "share one step count"),
        ((1, 2, 4, 8), (1, 1, 1, 1), "--target-loss", "within its first round"),
        ((1, 2, 4, 8), (3, 3, 3, 3), "--target-loss", "every run took 3 rounds"),
        ((4, 8), (2, 1), "--steps", "rounds fell like 1/n"),
        ((1, 2, 4), (3, 2, 1), "--target-loss", "a = 0.785 < 1"),
    ],
)
def test_degenerate_fits_are_refused(
    steps: tuple[int, ...], rounds: tuple[int | None, ...], flag: str, phrase: str
) -> None:
    result = diagnose_calibration(_points(steps, rounds), 2.2, 10)
    assert not result.usable
    assert result.num_steps == steps and result.rounds == rounds
    assert result.problems[0].flag == flag
    err = result.error()
    assert err.path == flag and phrase in str(err)
    assert "\n" not in str(err)
    assert result.target_ranges is None  # synthetic points carry no loss curves
    with pytest.raises(ConfigError):
        result.raise_if_unusable()
    with pytest.raises(ConfigError):
        fit_points(_points(steps, rounds), 2.2, 10)


def test_diagnostics_name_constants_at_their_bounds() -> None:
    up = diagnose_calibration(_points((4, 8), (2, 1)), 2.2, 10)
    assert up.fit is not None and any("v = " in b and "upper bound" in b for b in up.at_bound)
    assert up.used_steps == (4, 8) and up.distinct_rounds == (1.0, 2.0)
    flat = diagnose_calibration(_points((1, 2, 4, 8), (1, 1, 1, 1)), 2.2, 10)
    assert flat.fit is not None and any("lower bound" in b for b in flat.at_bound)
    assert flat.distinct_rounds == (1.0,)
    never = diagnose_calibration(_points((1, 2), (None, None)), 2.2, 10)
    assert never.fit is None and never.used_steps == () and never.best_val_loss == (3.0, 3.0)


def test_two_point_fit_is_usable_with_a_note() -> None:
    rounds = predicted_rounds(np.array([2, 8]), 3.0, 4.0).tolist()
    result = diagnose_calibration(_points((1, 2, 8), (None, *rounds)), 2.2, 10)
    assert result.usable and result.fit is not None
    assert result.fit.a == pytest.approx(3.0, rel=1e-5)
    assert any("exact by design" in note for note in result.notes)


@pytest.mark.parametrize(
    ("a", "v", "flag"),
    [
        (0.00055, 10000.0, "--steps"),  # issue 8: N = 0.57 rounds, n = 10000 steps
        (0.01, 2000.0, "--steps"),  # 250x the largest n: an extrapolation, not a bound
        (3.0, 0.001, "--steps"),
        (3.0, 0.005, "--steps"),
        (0.6, 5.0, "--target-loss"),
        (4.0, 6.0, None),
        (1.0, 2.0, None),
    ],
)
def test_constant_problems(a: float, v: float, flag: str | None) -> None:
    problems = constant_problems(a, v, (1, 2, 4, 8))
    assert [p.flag for p in problems] == ([flag] if flag else [])
    if flag is None:  # what is accepted never lets the planner plan under one round
        assert global_rounds(1e-12, a) >= 1.0


def test_write_calibrated_refuses_unmeasured_constants(tmp_path: Path) -> None:
    base = load_scenario(None, [])
    fit = fit_convergence([4, 8], [2.0, 1.0])
    new, old = tmp_path / "new.toml", tmp_path / "old.toml"
    old.write_text("keep\n")
    for path in (new, old):
        with pytest.raises(ConfigError) as err:
            write_calibrated(path, base, fit, 2.2)
        assert err.value.path == "--steps"
    assert not new.exists() and old.read_text() == "keep\n"


def _total_steps_curve(n: int, num_rounds: int) -> tuple[float, ...]:
    """Loss that depends only on the total local steps n (r + 1): rounds ~ 1/n."""
    return tuple(2.0 + 4.0 / (n * (r + 1)) for r in range(num_rounds))


def _model_curve(n: int, num_rounds: int) -> tuple[float, ...]:
    """Loss whose rounds-to-target follow docs/MODEL.md section 4 with v = 6."""
    g = 1.0 - 2.0 ** (-n / 6.0)
    return tuple(2.0 + 3.0 * math.exp(-2.0 * (r + 1) * g) for r in range(num_rounds))


def _curve_points(
    curve_of: Callable[[int, int], tuple[float, ...]], target: float, num_rounds: int
) -> list[CalibrationPoint]:
    out = []
    for n in (1, 2, 4, 8):
        records = [_val(-1, 5.0)] + [_val(r, x) for r, x in enumerate(curve_of(n, num_rounds))]
        out.append(point_from_records(n, records, target, f"/r{n}"))
    return out


@pytest.mark.parametrize("curve_of", [_total_steps_curve, _model_curve])
def test_target_ranges_are_exactly_the_usable_targets(
    curve_of: Callable[[int, int], tuple[float, ...]],
) -> None:
    result = diagnose_calibration(_curve_points(curve_of, 1.9, 8), 1.9, 8)
    assert not result.usable and result.problems[0].flag == "--target-loss"
    ranges = result.target_ranges
    assert ranges  # these runs do support some target
    # Rounds change only where a target crosses a measured loss: try every one.
    losses = sorted({x for n in (1, 2, 4, 8) for x in curve_of(n, 8)})
    for t in [*losses, losses[0] - 0.01, losses[-1] + 0.01]:
        usable = diagnose_calibration(_curve_points(curve_of, t, 8), t, 8, suggest=False).usable
        assert usable == any(lo <= t < hi for lo, hi in ranges), t


def test_refusal_suggests_a_target_that_works() -> None:
    result = diagnose_calibration(_curve_points(_model_curve, 1.9, 12), 1.9, 12)
    text = str(result.error())
    assert "lowest val loss per run: n=1 " in text and "--max-rounds" in text
    suggested = float(text.split("e.g. --target-loss ")[1].split(",")[0].split(";")[0])
    again = diagnose_calibration(_curve_points(_model_curve, suggested, 12), suggested, 12)
    assert again.usable and again.fit is not None and again.fit.a >= 1.0


def _fake_run_calibration(curve_of: Callable[[int, int], tuple[float, ...]]) -> Callable:
    """run_calibration's signature, with synthetic val_loss traces instead of training."""

    def fake(
        base: ScenarioConfig,
        steps: tuple[int, ...],
        max_rounds: int,
        target_loss: float,
        out_dir: Path,
        on_run: Callable[[int, Path], None] | None = None,
    ) -> tuple[list[CalibrationPoint], list]:
        points = []
        for n in steps:
            run_dir = out_dir / f"steps_{n}"
            if on_run is not None:
                on_run(n, run_dir)
            curve = curve_of(n, max_rounds)
            records = [_val(-1, 5.0)] + [_val(r, x) for r, x in enumerate(curve)]
            points.append(point_from_records(n, records, target_loss, str(run_dir)))
        return points, []

    return fake


@pytest.mark.parametrize(
    ("curve_of", "target", "flag", "phrase"),
    [
        (_total_steps_curve, "2.53", "--steps", "rounds fell like 1/n"),  # the issue
        (_total_steps_curve, "1.9", "--target-loss", "no run reached it"),
        (_model_curve, "4.9", "--target-loss", "within its first round"),
    ],
)
def test_cli_refuses_degenerate_fit_and_writes_nothing(
    curve_of: Callable[[int, int], tuple[float, ...]],
    target: str,
    flag: str,
    phrase: str,
    tmp_path: Path,
    monkeypatch,
    capsys,
) -> None:
    import fedsllm.experiments.calibrate as calibrate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(calibrate, "run_calibration", _fake_run_calibration(curve_of))
    new, old = tmp_path / "new.toml", tmp_path / "old.toml"
    old.write_text("keep\n")
    for i, path in enumerate((new, old)):
        out = tmp_path / f"out{i}"
        code = main(["calibrate", "--target-loss", target, "--out", str(out), "--write", str(path)])
        assert code == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("fedsllm: error:")]
        assert len(errors) == 1 and errors[0].startswith(f"fedsllm: error: {flag}: ")
        assert phrase in errors[0] and "targets these runs support" in errors[0]
        assert "val loss after each round" in err  # the table to pick a target from
        doc = json.loads((out / "calibrate.json").read_text())
        assert doc["fit"] is None and doc["diagnostics"]["problems"][0]["flag"] == flag
        assert doc["written"] == ""
    assert not new.exists() and old.read_text() == "keep\n"


def test_cli_writes_a_usable_fit_and_prints_the_losses(tmp_path: Path, monkeypatch, capsys) -> None:
    import fedsllm.experiments.calibrate as calibrate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(calibrate, "run_calibration", _fake_run_calibration(_model_curve))
    path = tmp_path / "cal.toml"
    argv = ["calibrate", "--target-loss", "2.3", "--max-rounds", "12", "--out", "out"]
    assert main([*argv, "--write", str(path)]) == 0
    captured = capsys.readouterr()
    assert "val loss after each round" in captured.err
    assert "targets these runs support" in captured.err
    loaded = load_scenario(path)
    assert loaded.convergence.a >= 1.0
    assert f"a = {loaded.convergence.a:.6g}" in captured.out
    assert "val loss <= 2.3" in path.read_text()
    doc = json.loads((tmp_path / "out" / "calibrate.json").read_text())
    assert doc["diagnostics"]["usable"] and doc["diagnostics"]["rounds"] == [11, 6, 4, 2]
    assert doc["fit"]["a"] == pytest.approx(loaded.convergence.a)


@pytest.mark.parametrize(
    ("num_rounds", "expected"),
    [(3, [0, 1, 2]), (8, list(range(8))), (30, [0, 4, 8, 12, 17, 21, 25, 29])],
)
def test_loss_table_shows_first_and_last_round(num_rounds: int, expected: list[int]) -> None:
    from fedsllm.cli.calibrate import _shown_rounds

    assert _shown_rounds(num_rounds) == expected
