"""A real run's telemetry: every role's records reach the fed server's collector
exactly once (the main server's last ones included, sent while it stops), the
spools end empty, and the live progress comes from the Subscribe stream."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json

pytestmark = pytest.mark.slow


def test_run_trace_is_collected_once_and_watched_live(tmp_path) -> None:
    out = tmp_path / "run"
    proc = fedsllm(
        "run",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--out",
        str(out),
        *overrides("link.emulate_compute=true"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(out / "summary.json")["ok"] is True

    by_source: dict[str, list[dict]] = {}
    for path in sorted((out / "trace").glob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert all(r["source"] == path.stem and r["schema"] == 1 for r in lines), path
        by_source[path.stem] = lines
    assert set(by_source) == {"fed_server", "main_server", "client_0", "client_1"}
    for source, lines in by_source.items():
        assert sorted(r["seq"] for r in lines) == list(range(1, len(lines) + 1)), source
    # Sent by the main server after its clients were gone, while it stopped.
    assert any(r["name"] == "device_summary" for r in by_source["main_server"])
    assert sum(r["name"] == "train_loss" for r in by_source["client_1"]) == 4
    for spool in (out / "spool").glob("*.spool"):
        assert spool.stat().st_size == 0, spool

    # Printed by fedsllm run's progress, which only the telemetry stream feeds.
    assert "validation loss initial" in proc.stderr
    assert "round 1 aggregated (2 clients)" in proc.stderr
