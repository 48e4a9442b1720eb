"""What would fail only after the roles started is refused by the launcher first
(fedsllm.launch.check_launch): exit 2 naming the field, before a run directory
exists or any role starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsllm.cli import main
from fedsllm.config import load_scenario
from fedsllm.delay.policies import check_plannable, fixed_fractions

FIXED = "policy.name='fixed'"


def _shares(tmp_path: Path, content: str | None) -> str:
    path = tmp_path / "shares.json"
    if content is not None:
        path.write_text(content)
    return f"policy.shares_file='{path}'"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "file not found"),
        ("[0.5, 0.6]", "clients.num_clients=3"),
        ("[0.5, 0.4, 0.3]", "sum to <= 1"),
        ("{", "not a readable JSON file"),
    ],
)
def test_run_refuses_a_bad_shares_file_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | None, words: str
) -> None:
    out = tmp_path / "run"
    argv = ["run", "--quiet", "--skip-memory-check", "--out", str(out)]
    rc = main([*argv, "--set", FIXED, "--set", _shares(tmp_path, content)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "policy.shares_file" in err and words in err
    assert not out.exists()  # no half-made run directory


def test_compare_refuses_a_bad_shares_file_before_the_first_policy_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--skip-memory-check", "--out", str(out), "--policies", "optimal,fixed"]
    assert main([*argv, "--set", _shares(tmp_path, None)]) == 2
    assert "policy.shares_file" in capsys.readouterr().err
    assert not out.exists()


def test_a_good_shares_file_is_what_the_controller_gets(tmp_path: Path) -> None:
    scenario = load_scenario(None, [FIXED, _shares(tmp_path, json.dumps([0.5, 0.3, 0.2]))])
    check_plannable(scenario)
    assert fixed_fractions(scenario).tolist() == [0.5, 0.3, 0.2]
    assert fixed_fractions(load_scenario(None, [])) is None  # policy optimal: no file


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ([], "or pass --insecure"),
        # TEST-NET-1 (RFC 5737): never an address of this host.
        (["--insecure"], "cannot listen on it here"),
    ],
)
def test_run_refuses_a_run_host_it_cannot_serve_on(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], words: str
) -> None:
    out = tmp_path / "run"
    argv = ["run", "--quiet", "--skip-memory-check", "--out", str(out), *flags]
    assert main([*argv, "--set", "run.host='192.0.2.1'"]) == 2
    err = capsys.readouterr().err
    assert "run.host" in err and words in err and "Traceback" not in err
    assert not out.exists()


def test_a_loopback_run_host_passes(tmp_path: Path) -> None:
    from fedsllm.launch import check_launch

    check_launch(load_scenario(None, ["run.host='127.0.0.2'"]))
