"""Many clients on one machine (issue 12): 64 clients, each its own process
forked from the client host, complete two rounds, and every client's update is
aggregated in every round. Before the fix the servers' worker pools (32) left
the 33rd stream without a thread and round 0 never closed."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json

pytestmark = pytest.mark.slow

NUM_CLIENTS = 64


def test_sixty_four_clients_two_rounds(tmp_path) -> None:
    out = tmp_path / "run"
    proc = fedsllm(
        "run",
        "--clients",
        str(NUM_CLIENTS),
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--quiet",
        "--out",
        str(out),
        *overrides("data.num_train_samples=512", "training.eval_every=2"),
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_json(out / "summary.json")
    assert summary["ok"] is True
    assert set(summary["exit_codes"].values()) == {0}
    assert {f"client_{k}" for k in range(NUM_CLIENTS)} <= set(summary["exit_codes"])
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for r in summary["rounds"]:
        assert r["num_clients"] == NUM_CLIENTS
        assert r["num_steps"] == NUM_CLIENTS * 2
    # Every client's update went into each round's aggregate (the fed server's log).
    log = (out / "logs" / "fed_server.log").read_text()
    everyone = str(list(range(NUM_CLIENTS)))
    for round_index in (0, 1):
        assert f"round {round_index} aggregated from clients {everyone}" in log
    assert read_json(out / "checkpoint.json")["completed_round"] == 1
