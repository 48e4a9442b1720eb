"""An output path that cannot be written is bad input: one line naming it, exit 2,
before anything runs or is written (issue: a raw PermissionError traceback)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from fedsllm.cli import main
from tests.e2e.conftest import overrides


def _denied(tmp_path: Path) -> Path:
    """A directory this process may not create: /sys refuses even root."""
    if os.geteuid() == 0:
        return Path("/sys") / f"fedsllm-test-{uuid.uuid4().hex[:8]}"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


def _under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker / "out"


COMMANDS = {
    "run": lambda out: ["run", "--quiet", "--out", str(out), *overrides()],
    "compare": lambda out: ["compare", "--policies", "optimal,equal", "--out", str(out)],
    "sweep": lambda out: ["sweep", "--param", "num_clients", "--values", "2,3", "--out", str(out)],
    "calibrate": lambda out: [
        "calibrate",
        "--target-loss",
        "2.0",
        "--write",
        str(out.parent.parent / "calibrated.toml"),
        "--out",
        str(out),
    ],
}


@pytest.mark.parametrize("make_path", [_denied, _under_a_file], ids=["denied", "under-a-file"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unwritable_out_is_one_line_exit_2(tmp_path, capsys, command, make_path) -> None:
    out = make_path(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(COMMANDS[command](out))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedsllm: error: --out: ") and str(out) in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _run_dir_to_export(tmp_path: Path) -> Path:
    """As much of a run directory as export reads before it checks OUT_DIR (the
    inputs come first; the adapters are read only after)."""
    from fedsllm.config import load_scenario
    from fedsllm.launch import write_scenario
    from fedsllm.model.export import CLIENT_ADAPTER, SERVER_ADAPTER

    run_dir = tmp_path / "run"
    (run_dir / "adapters").mkdir(parents=True)
    write_scenario(run_dir, load_scenario())
    for rel in (CLIENT_ADAPTER, SERVER_ADAPTER):
        (run_dir / rel).write_bytes(b"not read before OUT_DIR is checked")
    return run_dir


@pytest.mark.parametrize("make_path", [_denied, _under_a_file], ids=["denied", "under-a-file"])
def test_export_to_an_unwritable_out_dir_is_one_line_exit_2(tmp_path, capsys, make_path) -> None:
    out = make_path(tmp_path)
    code = main(["export", str(_run_dir_to_export(tmp_path)), str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("fedsllm: error: OUT_DIR: ") and str(out) in err
    assert not out.exists()
