"""Policy comparison: input checks, measurement from trace records, the arithmetic of
reductions and time to target on synthetic runs, and the files written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedsllm.cli import main
from fedsllm.config import apply_overrides, from_dict, load_dict, load_scenario
from fedsllm.errors import ConfigError
from fedsllm.experiments.compare import (
    REDUCTION_DEFINITION,
    TRUNCATION_COLUMNS,
    PolicyResult,
    RoundMeasure,
    build_figure,
    compare_base_dict,
    compare_doc,
    compare_rows,
    figure_labels,
    full_plan_rounds,
    load_compare_base,
    measure_run,
    parse_policies,
    plan_from_records,
    policy_scenario,
    reduction_pct,
    reduction_text,
    reference_policy,
    render_markdown,
    summary_lines,
    table_rows,
    time_to_target,
    write_outputs,
)
from fedsllm.report import load_run
from fedsllm.report.phases import measure_rounds
from fedsllm.telemetry.records import TelemetryRecord
from tests.fedsllm.report.synthetic import DIL, make_run_dir, typed
from tests.fedsllm.report.synthetic import synthetic_records as report_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_parse_policies() -> None:
    assert parse_policies("optimal,equal") == ("optimal", "equal")
    assert parse_policies(" equal , random,") == ("equal", "random")


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("optimal,bogus", "bogus"),
        ("fixed_steps", "fixed_steps"),
        ("equal,equal", "equal"),
        (",", ","),
    ],
)
def test_parse_policies_refuses(text: str, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policies(text)
    assert err.value.path == "--policies"
    assert err.value.value == bad


def test_reference_is_equal_else_the_first_policy() -> None:
    assert reference_policy(("optimal", "equal"))[0] == "equal"
    ref, note = reference_policy(("optimal", "proportional"))
    assert ref == "optimal"
    assert "not compared" in note and "optimal" in note


@pytest.mark.parametrize(
    ("ref", "value", "pct"),
    [
        (10.0, 6.0, 40.0),
        (10.0, 12.0, -20.0),
        (10.0, 10.0, 0.0),
        (0.0, 1.0, math.nan),
        (math.nan, 1.0, math.nan),
    ],
)
def test_reduction_pct(ref: float, value: float, pct: float) -> None:
    got = reduction_pct(ref, value)
    assert (math.isnan(got) and math.isnan(pct)) or got == pytest.approx(pct)


def _rounds(delays: list[float], losses: list[float], gap: float = 0.5) -> list[RoundMeasure]:
    out, t = [], 1.0
    for r, (d, loss) in enumerate(zip(delays, losses, strict=True)):
        out.append(RoundMeasure(r, d, loss, start_s=t, end_s=t + d))
        t += d + gap  # an evaluation of `gap` seconds between rounds
    return out


def _result(policy: str, delays: list[float], predicted: float, **plan: Any) -> PolicyResult:
    losses = [5.0 - i for i in range(len(delays))]
    return PolicyResult(
        policy=policy,
        run_dir=f"/runs/{policy}",
        measured_source="report",
        rounds=_rounds(delays, losses),
        plan={
            "predicted_total_s": predicted,
            "eta": 0.5,
            "num_local_steps": 3,
            "num_rounds": len(delays),
            "predicted_round_s": predicted / len(delays),
            **plan,
        },
    )


def test_compare_rows_reductions_and_percentage_points() -> None:
    equal = _result("equal", [2.0, 3.0, 5.0], 8.0)  # measured 10
    optimal = _result("optimal", [1.0, 2.0, 3.0], 4.0)  # measured 6
    rows = {r["policy"]: r for r in compare_rows([optimal, equal], "equal")}
    o, e = rows["optimal"], rows["equal"]
    assert (o["measured_total_s"], o["predicted_total_s"]) == (6.0, 4.0)
    assert o["measured_reduction_pct"] == pytest.approx(40.0)
    assert o["predicted_reduction_pct"] == pytest.approx(50.0)
    assert o["diff_pp"] == pytest.approx(-10.0)
    assert o["model_error_pct"] == pytest.approx((4.0 - 6.0) / 6.0 * 100)
    assert e["reference"] and not o["reference"]
    assert e["measured_reduction_pct"] == 0.0 and e["diff_pp"] == 0.0
    assert o["num_rounds_measured"] == 3 and o["num_local_steps"] == 3
    assert math.isnan(o["time_to_target_s"]) and o["target_round"] == -1


def test_compare_rows_against_a_failed_reference_is_nan() -> None:
    failed = PolicyResult(policy="equal", ok=False, failed_process="client_1")
    optimal = _result("optimal", [1.0], 1.0)
    rows = compare_rows([optimal, failed], "equal")
    assert math.isnan(rows[0]["measured_reduction_pct"])
    assert math.isnan(rows[1]["measured_total_s"])
    assert rows[1]["failed_process"] == "client_1" and rows[1]["ok"] is False


def test_time_to_target() -> None:
    rounds = _rounds([2.0, 3.0, 4.0, 1.0], [4.0, 3.2, 2.9, 2.5], gap=0.5)
    got = time_to_target(rounds, 3.0)
    assert got["round"] == 2
    assert got["delay_s"] == pytest.approx(9.0)  # 2 + 3 + 4, evaluations left out
    assert got["wall_s"] == pytest.approx(9.0 + 2 * 0.5)  # start of round 0 to end of round 2
    assert time_to_target(rounds, 2.5)["round"] == 3
    assert math.isnan(time_to_target(rounds, 1.0)["delay_s"])
    assert math.isnan(time_to_target(rounds, 0.0)["delay_s"])  # 0 = no target


def test_time_to_target_per_policy_in_rows() -> None:
    a = _result("equal", [2.0, 2.0, 2.0], 6.0)  # losses 5, 4, 3
    b = _result("optimal", [1.0, 1.0], 2.0)  # losses 5, 4
    rows = {r["policy"]: r for r in compare_rows([a, b], "equal", target_loss=3.5)}
    assert rows["equal"]["target_round"] == 2 and rows["equal"]["time_to_target_s"] == 6.0
    assert rows["optimal"]["target_round"] == -1
    assert math.isnan(rows["optimal"]["time_to_target_s"])


def test_compare_base_dict() -> None:
    data = compare_base_dict({"training": {"batch_size": 4}})
    assert data["link"] == {"backend": "token", "emulate_compute": True}
    assert "eval_every" not in data["training"]
    tc = compare_base_dict(
        {
            "link": {"backend": "tc", "emulate_compute": False},
            "training": {"target_val_loss": 2.5, "eval_every": 5},
        }
    )
    assert tc["link"] == {"backend": "tc", "emulate_compute": True}
    assert tc["training"]["eval_every"] == 1
    raw = {"link": {"backend": "none"}}
    assert compare_base_dict(raw)["link"]["backend"] == "none"
    assert raw == {"link": {"backend": "none"}}  # the input is not mutated


def test_policy_scenarios_differ_only_in_policy_name() -> None:
    data = compare_base_dict(apply_overrides(load_dict(None), ["clients.num_clients=2"]))
    base = from_dict(data)
    a, b = policy_scenario(base, "optimal"), policy_scenario(base, "equal")
    da, db = a.to_dict(), b.to_dict()
    assert da["policy"].pop("name") == "optimal" and db["policy"].pop("name") == "equal"
    assert da == db


def _span(role: str, client: int, rnd: int, name: str, t0: float, t1: float) -> TelemetryRecord:
    return typed(
        {
            "kind": "span",
            "role": role,
            "client": client,
            "round": rnd,
            "step": 0,
            "name": name,
            "t0": t0,
            "t1": t1,
            "bytes": 0,
            "extra": {},
        }
    )


def _event(
    name: str, rnd: int, t: float, role: str = "fed_server", client: int = -1, **extra: Any
) -> TelemetryRecord:
    return typed(
        {
            "kind": "event",
            "role": role,
            "client": client,
            "round": rnd,
            "step": -1,
            "name": name,
            "t0": t,
            "t1": t,
            "bytes": 0,
            "extra": extra,
        }
    )


def synthetic_records() -> list[TelemetryRecord]:
    """Two clients: client 0 evaluates 100..101 then starts at 101; client 1 starts at 103.
    Round 0 ends at 105, round 1 (with an eval 105..106 inside) at 109."""
    recs = [
        _event(
            "plan",
            -1,
            99.0,
            policy="optimal",
            eta=0.6,
            num_local_steps=2,
            num_rounds=2,
            predicted_round_s=1.5,
            predicted_total_s=3.0,
        ),
        _span("client", 0, -1, "eval", 100.0, 101.0),
        _event("val_loss", -1, 101.0, role="client", client=0, loss=5.0),
        _span("client", 0, 0, "client_forward", 101.0, 102.0),
        _span("client", 1, 0, "global_download", 100.5, 102.9),
        _span("client", 1, 0, "client_forward", 103.0, 104.0),
        _event("train_loss", 0, 104.0, role="client", client=0, loss=4.0),
        _event("round_done", 0, 105.0),
        _span("client", 0, 0, "eval", 105.0, 106.0),
        _event("val_loss", 0, 106.0, role="client", client=0, loss=4.5),
        _span("client", 0, 1, "client_forward", 106.0, 107.0),
        _event("train_loss", 1, 107.0, role="client", client=0, loss=3.0),
        _event("round_done", 1, 109.0),
    ]
    return sorted(recs, key=lambda r: r.t0)


def test_report_windows_cut_eval_and_startup() -> None:
    """The report's round windows (the one definition compare uses) on a trace without
    aggregation spans: round_done ends a round, round 0 opens at the last client's start."""
    recs = synthetic_records()
    rounds = measure_rounds(recs, time_dilation=1.0)
    assert [r.round for r in rounds] == [0, 1] and all(r.complete for r in rounds)
    # Round 0 opens when the last client starts (103), ends at 105.
    assert rounds[0].measured_s == pytest.approx(2.0)
    # Round 1: 105..109 minus the eval 105..106.
    assert rounds[1].measured_s == pytest.approx(3.0)
    assert (rounds[0].start_s, rounds[1].end_s) == (3.0, 9.0)  # offsets from the eval at 100
    halved = measure_rounds(recs, time_dilation=2.0)
    assert [r.measured_s for r in halved] == pytest.approx([1.0, 1.5])


def test_startup_skew_leaves_out_evaluation() -> None:
    recs = synthetic_records()
    # Clients start at 101 and 103; no eval overlaps 101..103.
    assert measure_rounds(recs, 1.0)[0].startup_skew_s == pytest.approx(2.0)
    recs.append(_span("client", 0, -1, "eval", 101.5, 102.5))
    assert measure_rounds(recs, 1.0)[0].startup_skew_s == pytest.approx(1.0)
    assert measure_rounds(recs, 2.0)[0].startup_skew_s == pytest.approx(0.5)
    alone = [r for r in recs if r.client != 1]
    assert measure_rounds(alone, 1.0)[0].startup_skew_s == 0.0


def test_measure_run_reads_the_report(tmp_path: Path) -> None:
    """compare's measurement of a run directory is the report's, with losses from the trace."""
    run = make_run_dir(tmp_path / "run", report_records())
    scenario = load_run(run)[0]
    res = measure_run(run, scenario)
    report = json.loads((run / "report.json").read_text())
    assert res.measured_source == "report" and res.ok
    assert [r.round for r in res.rounds] == [0, 1]
    assert [r.measured_s for r in res.rounds] == pytest.approx([1.0, 0.9])  # see test_report
    assert [r.measured_s for r in res.rounds] == pytest.approx(
        [r["measured_s"] for r in report["rounds"]]
    )
    assert res.measured_total_s == pytest.approx(report["totals"]["measured_s"])
    assert res.report_predicted_s == pytest.approx(report["totals"]["predicted_s"])
    assert [r.val_loss for r in res.rounds] == [4.0, 3.0]
    assert (res.initial_val_loss, res.final_val_loss) == (5.0, 3.0)
    assert res.eval_s == pytest.approx(1.4 / DIL)  # both eval spans, wall / dilation
    assert res.startup_skew_s == 0.0

    # compare's own synthetic trace: no aggregation spans, client 1 starts 2 s late.
    skewed = make_run_dir(tmp_path / "skewed", synthetic_records())
    res = measure_run(skewed, load_run(skewed)[0])
    assert [r.measured_s for r in res.rounds] == pytest.approx([2.0 / DIL, 3.0 / DIL])
    assert res.startup_skew_s == pytest.approx(2.0 / DIL)
    assert res.predicted_total_s == 3.0  # the plan event
    assert [r.val_loss for r in res.rounds][0] == 4.5 and math.isnan(res.rounds[1].val_loss)


def test_measure_run_knows_the_whole_plan_of_a_cut_run(tmp_path: Path) -> None:
    """policy.max_rounds=2 cut the plan (eta 0.6): its whole N is ceil(a / (1 - eta))."""
    run = make_run_dir(tmp_path / "cut", synthetic_records(), "policy.max_rounds=2")
    res = measure_run(run, load_run(run)[0])
    assert res.plan["num_rounds"] == 2
    assert res.num_rounds_full == math.ceil(4.0 / (1 - 0.6))  # convergence.a = 4
    whole = make_run_dir(tmp_path / "whole", synthetic_records())
    assert measure_run(whole, load_run(whole)[0]).num_rounds_full == 2


def test_plan_from_records() -> None:
    plan = plan_from_records(synthetic_records())
    assert plan["predicted_total_s"] == 3.0 and plan["num_rounds"] == 2
    assert plan_from_records([]) == {}


def test_doc_and_files(tmp_path: Path) -> None:
    base = load_scenario(None, ["training.target_val_loss=3.5"])
    results = [
        _result("optimal", [1.0, 1.0, 1.0], 2.5),
        _result("equal", [2.0, 2.0], 4.0),
        PolicyResult(policy="random", ok=False, failed_process="client_0", failed_reason="x"),
    ]
    ref, note = reference_policy(("optimal", "equal", "random"))
    doc = compare_doc(base, results, ref, note)
    json_path, md_path, png_path = write_outputs(doc, tmp_path)
    back = json.loads(json_path.read_text())  # strict JSON: NaN became null
    assert [p["policy"] for p in back["policies"]] == ["optimal", "equal", "random"]
    assert back["reference"] == "equal" and back["target_val_loss"] == 3.5
    assert back["policies"][0]["measured_reduction_pct"] == pytest.approx(25.0)
    assert back["policies"][0]["predicted_reduction_pct"] == pytest.approx(37.5)
    assert back["policies"][0]["diff_pp"] == pytest.approx(-12.5)
    assert back["policies"][0]["target_round"] == 2  # losses 5, 4, 3
    assert back["policies"][2]["measured_total_s"] is None
    assert back["scenario"]["training"]["target_val_loss"] == 3.5
    md = md_path.read_text()
    assert "| optimal |" in md and "equal (ref)" in md and "FAILED (client_0)" in md
    assert "time to target s" in md
    assert png_path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--policies", "optimal,bogus"], "bogus"),
        (["--policies", "fixed_steps"], "fixed_steps"),
        (["--policies", "optimal", "--set", "training.batch_size=0"], "training.batch_size"),
        (["--policies", "optimal", "--clients", "0"], "--clients: must be >= 1"),
        (["--policies", "fixed"], "policy.shares_file"),
        (["--policies", "optimal,equal", "--set", "training.num_rounds=3"], "policy.max_rounds"),
        (["--policies", "optimal", "--set", "training.num_local_steps=3"], "fixed_steps"),
        (["--policies", "optimal", "--rounds", "0"], "--rounds"),
    ],
)
def test_cli_refuses_bad_input_before_running(
    argv: list[str], named: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_a_used_out_dir(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    assert main(["compare", "--policies", "optimal", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err


# ------------------------------------------------------------ sign and truncation


@pytest.mark.parametrize(
    ("pct", "ref", "text"),
    [
        (23.3, None, "23.3% less"),
        (-12.04, None, "12.0% more"),
        (23.3, "equal", "23.3% less delay than equal"),
        (-5.0, "equal", "5.0% more delay than equal"),
        (math.nan, "equal", "-"),
        (None, None, "-"),
    ],
)
def test_reduction_text(pct: float | None, ref: str | None, text: str) -> None:
    assert reduction_text(pct, ref) == text


@pytest.mark.parametrize(
    ("plan", "max_rounds", "whole"),
    [
        ({"num_rounds": 2, "eta": 0.5}, 2, 8),  # cut: ceil(4 / 0.5)
        ({"num_rounds": 2, "eta": 0.5}, 0, 2),  # no cap: what ran is the plan
        ({"num_rounds": 3, "eta": 0.5}, 5, 3),  # the cap was above the plan's N
        ({"num_rounds": 8, "eta": 0.5}, 8, 8),  # the cap was exactly N
        ({}, 2, 0),  # no plan
    ],
)
def test_full_plan_rounds(plan: dict[str, Any], max_rounds: int, whole: int) -> None:
    assert full_plan_rounds(plan, 4.0, max_rounds) == whole


def _cut(policy: str, n: int, round_s: float, whole: int, delays: list[float]) -> PolicyResult:
    res = _result(
        policy,
        delays,
        round_s * len(delays),
        num_local_steps=n,
        predicted_round_s=round_s,
    )
    res.num_rounds_full = whole
    return res


def _cut_doc() -> dict[str, Any]:
    """The trap of issue 8: optimal plans 37 one-step rounds of 1 s, equal 8 six-step
    rounds of 3 s; both cut to 2 rounds. Cut, optimal looks 3x faster; whole, it is slower."""
    base = load_scenario(None, ["policy.max_rounds=2"])
    results = [
        _cut("optimal", 1, 1.0, 37, [1.1, 1.1]),  # measured 2.2, predicted 2, whole 37
        _cut("equal", 6, 3.0, 8, [3.3, 3.3]),  # measured 6.6, predicted 6, whole 24
    ]
    return compare_doc(base, results, *reference_policy(("optimal", "equal")))


def test_rows_of_a_cut_comparison_carry_the_whole_plans() -> None:
    doc = _cut_doc()
    assert doc["truncated"] is True and doc["settings"]["max_rounds"] == 2
    o, e = doc["policies"]
    assert (o["num_rounds_planned"], o["num_rounds_full"], o["truncated"]) == (2, 37, True)
    assert o["measured_reduction_pct"] == pytest.approx(100 * (6.6 - 2.2) / 6.6)
    assert o["predicted_reduction_pct"] == pytest.approx(100 * 4 / 6)
    assert (o["full_predicted_total_s"], e["full_predicted_total_s"]) == (37.0, 24.0)
    assert o["full_predicted_reduction_pct"] == pytest.approx(100 * (24 - 37) / 24)
    assert any("policy.max_rounds=2" in n and "not the reduction" in n for n in doc["notes"])


def test_table_of_a_cut_comparison() -> None:
    header, rows = table_rows(_cut_doc())
    assert header[-3:] == list(TRUNCATION_COLUMNS)
    cells = dict(zip(header, rows[0], strict=True))
    assert cells["n x rounds run"] == "1 x 2"
    assert cells["rounds"] == "truncated: 2 of 37"
    assert cells["measured vs ref"] == "66.7% less"
    assert cells["predicted vs ref"] == "66.7% less"
    assert cells["full plan pred. s"] == "37.000"
    assert cells["full plan pred. vs ref"] == "54.2% more"
    ref = dict(zip(header, rows[1], strict=True))
    assert ref["measured vs ref"] == "ref" and ref["rounds"] == "truncated: 2 of 8"
    md = render_markdown(_cut_doc())
    assert "| truncated: 2 of 37 |" in md and REDUCTION_DEFINITION in md


def test_table_of_whole_plans_has_no_truncation_columns() -> None:
    base = load_scenario(None)
    results = [_result("optimal", [1.0, 2.0, 3.0], 4.0), _result("equal", [2.0, 3.0, 5.0], 8.0)]
    doc = compare_doc(base, results, *reference_policy(("optimal", "equal")))
    header, rows = table_rows(doc)
    assert doc["truncated"] is False
    assert not set(TRUNCATION_COLUMNS) & set(header)
    cells = dict(zip(header, rows[0], strict=True))
    assert (cells["measured vs ref"], cells["predicted vs ref"]) == ("40.0% less", "50.0% less")
    assert cells["diff pp"] == "-10.0"


def _doc_with(slower: bool) -> dict[str, Any]:
    """optimal measured 23.3% faster than equal (or 23.3% slower)."""
    delays = [12.33 if slower else 7.67]
    results = [_result("optimal", delays, delays[0]), _result("equal", [10.0], 10.0)]
    return compare_doc(load_scenario(None), results, *reference_policy(("optimal", "equal")))


def test_figure_says_less_or_more_delay_like_the_table() -> None:
    """One sign convention: the figure once said "-23.3% vs equal" where the table had +23.3."""
    faster = _doc_with(slower=False)
    assert figure_labels(faster) == ["measured 23.3% less delay than equal", ""]
    header, rows = table_rows(faster)
    assert dict(zip(header, rows[0], strict=True))["measured vs ref"] == "23.3% less"
    fig = build_figure(faster)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["measured 23.3% less delay than equal"]
    assert summary_lines(faster) == [
        "optimal: measured 23.3% less delay than equal (predicted 23.3% less)"
    ]
    slower = _doc_with(slower=True)
    assert (
        figure_labels(slower)[0].startswith("measured ")
        and "more delay than equal" in (figure_labels(slower)[0])
    )


def test_figure_of_a_cut_comparison_shows_the_whole_plan() -> None:
    doc = _cut_doc()
    fig = build_figure(doc)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [
        "measured 66.7% less delay than equal\nwhole plan predicted 54.2% more",
    ]
    assert "first 2 rounds of each plan" in fig.axes[0].get_title()
    (line,) = summary_lines(doc)
    assert "truncated: 2 of 37 rounds" in line and line.endswith("54.2% more delay than equal")


# ------------------------------------------------------------ overrides and --rounds


def test_compare_rounds_cuts_every_plan_whatever_the_file_policy(tmp_path: Path) -> None:
    from fedsllm.cli import build_parser, flag_overrides

    scenario = tmp_path / "fixed.toml"
    scenario.write_text('[policy]\nname = "fixed_steps"\n')
    args = build_parser().parse_args(
        ["compare", "--scenario", str(scenario), "--policies", "optimal", "--rounds", "2"]
    )
    # compare passes its policies: --rounds is policy.max_rounds although the file says
    # fixed_steps (the compared runs plan), and the loader accepts it for them.
    overrides = flag_overrides(args, policy="optimal")
    assert overrides == ["policy.max_rounds=2"]
    base = load_compare_base(scenario, overrides, ("optimal", "equal"))
    assert base.policy.max_rounds == 2
    # The same with policy.name set by an override (the e2e tests' TINY set does).
    fixed = ["policy.name='fixed_steps'", *overrides]
    assert load_compare_base(None, fixed, ("optimal",)).policy.max_rounds == 2


def test_load_compare_base_refuses_what_the_compared_policies_ignore(tmp_path: Path) -> None:
    scenario = tmp_path / "fixed.toml"
    scenario.write_text('[policy]\nname = "fixed_steps"\n')
    with pytest.raises(ConfigError) as err:
        load_compare_base(scenario, ["training.num_rounds=3"], ("optimal", "equal"))
    assert err.value.path == "training.num_rounds" and "policy.max_rounds=3" in err.value.reason
