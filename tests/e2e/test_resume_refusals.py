"""`fedsllm run --resume` of a real run it must not continue: one whose state file
is damaged (exit 2, one line naming the file) and one already complete (exit 0,
one line saying so). Neither starts a role nor changes a byte or an mtime of
the run directory. One short real run is made for the module; each test
resumes a copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json, wait_no_run_pids
from tests.fedsllm.cli.test_resume_preflight import snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    out = cwd / "run"
    proc = fedsllm(
        "run", "--clients", "2", "--rounds", "2", "--local-steps", "2", "--quiet",
        "--out", str(out), *overrides(), cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(out / "summary.json")["ok"] is True
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return copy


def test_resume_of_a_complete_run_starts_nothing(finished_run, tmp_path) -> None:
    run_dir = _copy(finished_run, tmp_path)
    before = snapshot(run_dir)
    proc = fedsllm("run", "--resume", str(run_dir), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == (
        f"{run_dir}: the run is already complete (2 of 2 rounds); nothing to resume — "
        f"see `fedsllm report {run_dir}`\n"
    )
    assert proc.stderr == ""
    assert wait_no_run_pids(tmp_path, timeout_s=1.0) == []
    assert snapshot(run_dir) == before


def test_resume_of_a_truncated_ledger_exits_2_naming_it(finished_run, tmp_path) -> None:
    """The user trial: was exit 1 ("fed_server exited with code 1 before
    serving"), summary.json flipped to "ok": false, a failed launch in
    faults.json, scenario.json and security.txt rewritten."""
    run_dir = _copy(finished_run, tmp_path)
    ledger = run_dir / "state" / "ledger.json"
    ledger.write_text('{"format": 1, trunc\n')
    before = snapshot(run_dir)
    proc = fedsllm("run", "--resume", str(run_dir), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"fedsllm: error: {ledger}: not JSON ("), lines[0]
    assert "another fedsllm version" not in lines[0]
    assert wait_no_run_pids(tmp_path, timeout_s=1.0) == []
    assert snapshot(run_dir) == before
