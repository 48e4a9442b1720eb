"""A straggler past the round deadline: the fed server aggregates the clients at
hand (at least training.min_clients), refuses the late update with
OUT_OF_RANGE (reason "late" or "round_closed"), and the straggler catches up with the next global
adapter instead of failing the run."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json

pytestmark = pytest.mark.slow


def test_late_client_is_left_out_and_catches_up(tmp_path) -> None:
    from fedsllm.trace import read_records

    out = tmp_path / "run"
    # Client 2's device is emulated 100x slower than the others (about 0.5 s
    # per forward pass against 5 ms), and a round waits at most 0.3 s.
    proc = fedsllm(
        "run",
        "--clients",
        "3",
        "--rounds",
        "3",
        "--local-steps",
        "2",
        "--quiet",
        "--out",
        str(out),
        *overrides(
            "link.emulate_compute=true",
            "devices.client_flops=5e9",
            "clients.profiles=[{}, {}, {flops=5e7}]",
            "training.round_deadline_s=0.3",
            "training.min_clients=2",
        ),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_json(out / "summary.json")
    assert summary["ok"] and set(summary["exit_codes"].values()) == {0}
    records = read_records(out / "trace")
    rounds = [r for r in records if r["name"] == "round_done"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["extra"]["num_clients"] >= 2 for r in rounds)
    assert any(r["extra"]["num_clients"] == 2 for r in rounds)
    aggregated = [r for r in records if r["name"] == "aggregation"]
    assert all(
        2 not in r["extra"]["clients"] or r["extra"]["clients"] == [0, 1, 2] for r in aggregated
    )
    late = [r for r in records if r["name"] == "straggler"]
    assert late and {r["client"] for r in late} == {2}
    # Refused as late (past the deadline) or as a round already closed: OUT_OF_RANGE.
    assert all(
        "(late)" in r["extra"]["reason"] or "(round_closed)" in r["extra"]["reason"] for r in late
    ), late
