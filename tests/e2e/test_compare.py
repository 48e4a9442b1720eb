"""`fedsllm compare` end to end: two policies as real emulated runs on a tiny scenario."""

from __future__ import annotations

import math

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json
from tests.e2e.test_run import config_only_checkpoint

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compare_optimal_and_equal(tmp_path) -> None:
    out = tmp_path / "cmp"
    proc = fedsllm(
        "compare",
        "--policies",
        "optimal,equal",
        "--clients",
        "2",
        "--out",
        str(out),
        # TINY turns emulation off; compare turns compute pacing back on by itself.
        *overrides("link.backend='token'", "convergence.a=1.0", "convergence.v=2.0"),
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = read_json(out / "compare.json")
    assert doc["reference"] == "equal"
    assert doc["measured_source"] == "report"
    rows = {p["policy"]: p for p in doc["policies"]}
    assert set(rows) == {"optimal", "equal"}
    for name, row in rows.items():
        assert row["ok"] is True
        assert row["measured_total_s"] is not None and math.isfinite(row["measured_total_s"])
        assert row["measured_total_s"] > 0
        assert row["predicted_total_s"] is not None and row["predicted_total_s"] > 0
        # Every planned round ran and was measured.
        assert row["num_rounds_measured"] == row["num_rounds_planned"] >= 1
        assert (out / name / "summary.json").is_file()
        assert read_json(out / name / "scenario.json")["policy"]["name"] == name
    assert rows["equal"]["eta"] == pytest.approx(0.5)
    assert rows["equal"]["measured_reduction_pct"] == 0.0
    opt = rows["optimal"]
    assert opt["diff_pp"] == pytest.approx(
        opt["measured_reduction_pct"] - opt["predicted_reduction_pct"]
    )
    # Only the policy differed between the two runs.
    a = read_json(out / "optimal" / "scenario.json")
    b = read_json(out / "equal" / "scenario.json")
    for doc_ in (a, b):
        doc_.pop("scenario_hash")
        doc_["policy"].pop("name")
    assert a == b
    assert a["link"]["backend"] == "token" and a["link"]["emulate_compute"] is True
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert "| optimal |" in (out / "compare.md").read_text()


def test_failed_run_exits_1_naming_policy_and_process(tmp_path) -> None:
    out = tmp_path / "cmp"
    proc = fedsllm(
        "compare",
        "--policies",
        "equal,optimal",
        "--clients",
        "2",
        "--out",
        str(out),
        *overrides(f"model.path='{config_only_checkpoint(tmp_path / 'weightless')}'"),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "policy equal" in proc.stderr
    assert any(name in proc.stderr for name in ("fed_server", "main_server", "client_"))
    doc = read_json(out / "compare.json")
    # The first failure stops the comparison: optimal never ran.
    assert [p["policy"] for p in doc["policies"]] == ["equal"]
    assert doc["policies"][0]["ok"] is False and doc["policies"][0]["failed_process"]
