"""`fedsllm run` end to end: real processes, real gRPC, a real (tiny) model."""

from __future__ import annotations

import math

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json

pytestmark = pytest.mark.slow


def test_three_clients_two_rounds(tmp_path) -> None:
    out = tmp_path / "run"
    proc = fedsllm(
        "run",
        "--clients",
        "3",
        "--rounds",
        "2",
        "--local-steps",
        "4",
        "--quiet",
        "--out",
        str(out),
        *overrides("training.client_lr=1e-2", "training.server_lr=1e-2"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The run directory is said once at the end, on stdout (bare for scripts); the
    # stderr banner at the start is the only other mention.
    assert proc.stdout.strip() == str(out.resolve())
    assert proc.stderr.count(str(out.resolve())) <= 1, proc.stderr[-2000:]
    summary = read_json(out / "summary.json")
    assert summary["ok"] is True
    assert summary["exit_codes"] == {
        "fed_server": 0,
        "main_server": 0,
        "client_host": 0,
        "client_0": 0,
        "client_1": 0,
        "client_2": 0,
    }
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all(r["num_clients"] == 3 and r["num_steps"] == 12 for r in summary["rounds"])
    assert all(r["wall_s"] > 0 for r in summary["rounds"])
    assert math.isfinite(summary["initial_val_loss"])
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    for name in (
        "scenario.json",
        "checkpoint.json",
        "adapters/client_global.safetensors",
        "adapters/client_global_round0.safetensors",
        "adapters/client_global_round1.safetensors",
        "adapters/server.safetensors",
        "logs/fed_server.log",
        "logs/main_server.log",
        "logs/client_2.log",
        "trace/fed_server.jsonl",
        "trace/main_server.jsonl",
        "trace/client_0.jsonl",
    ):
        assert (out / name).is_file(), name
    scenario = read_json(out / "scenario.json")
    assert scenario["clients"]["num_clients"] == 3
    assert scenario["training"]["num_rounds"] == 2
    assert read_json(out / "checkpoint.json")["completed_round"] == 1
    assert "per-round summary" in proc.stderr


def test_bad_scenario_field_fails_before_anything_starts(tmp_path) -> None:
    proc = fedsllm(
        "run", "--set", "training.batch_size=0", "--out", str(tmp_path / "r"), cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "training.batch_size" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_unknown_field_is_named(tmp_path) -> None:
    proc = fedsllm("run", "--set", "training.num_epochs=3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "training.num_epochs: unknown field" in proc.stderr
    assert not (tmp_path / "runs").exists()


def config_only_checkpoint(path):
    """A directory with a valid config.json and no weights: it passes every check the
    launcher makes before starting (it counts FLOPs and memory from the config), and
    the roles fail when they load the weights."""
    from fedsllm.model.presets import preset_config

    preset_config("tiny-llama").save_pretrained(path)
    return path


def test_bad_model_path_fails_before_anything_starts(tmp_path) -> None:
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    out = tmp_path / "run"
    proc = fedsllm(
        "run", "--quiet", "--out", str(out), *overrides(f"model.path={str(empty)!r}"), cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("fedsllm: error: model.path: not a causal LM checkpoint")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_failing_process_is_named_and_everything_stops(tmp_path) -> None:
    empty = config_only_checkpoint(tmp_path / "not-a-checkpoint")
    out = tmp_path / "run"
    proc = fedsllm(
        "run", "--quiet", "--out", str(out), *overrides(f"model.path={str(empty)!r}"), cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "main_server" in proc.stderr and "exited with code" in proc.stderr
    summary = read_json(out / "summary.json")
    assert summary["ok"] is False
    assert summary["failed"]["process"] == "main_server"
    # Every started process was stopped and reaped: all have exit codes.
    # The client fork server (client/host.py) starts beside the servers.
    assert set(summary["exit_codes"]) == {"fed_server", "main_server", "client_host"}
