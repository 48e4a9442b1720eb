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


def test_fedsllm_watch_follows_a_launched_run_to_its_end(tmp_path) -> None:
    """`fedsllm watch RUN_DIR`, started beside `fedsllm run`, reads only
    RUN_DIR/watcher/token and the run's socket (no token of the launcher's), gets
    every record the collector stored, and ends with the run. The launcher's own
    two subscriptions (progress, and the round tracker of --restart on-failure)
    run meanwhile, under the same per-peer stream bound."""
    import subprocess
    import sys
    import time

    from tests.e2e.conftest import run_env, stop_run

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedsllm", "run", "--clients", "2", "--rounds", "2",
           "--restart", "on-failure", "--out", str(out), *overrides()]  # fmt: skip
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, env=run_env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watch: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 120
        while not (out / "scenario.json").is_file():  # the launcher's first file
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        watch = subprocess.Popen(
            [sys.executable, "-m", "fedsllm", "watch", str(out)],
            cwd=tmp_path, env=run_env(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _, run_err = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, run_err[-3000:]
        watched, watch_err = watch.communicate(timeout=60)
        assert watch.returncode == 0, watch_err[-3000:]
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()  # by its own pid: only a failed test gets here
            watch.wait()
        stop_run(launcher, tmp_path)
    records = [json.loads(line) for line in watched.splitlines()]
    stored = {
        (r["source"], r["seq"])
        for path in (out / "trace").glob("*.jsonl")
        for r in map(json.loads, path.read_text().splitlines())
    }
    assert {(r["source"], r["seq"]) for r in records} == stored
    assert len(records) == len(stored)  # each once
    assert "round 1 aggregated (2 clients)" in run_err  # the launcher's progress followed too
