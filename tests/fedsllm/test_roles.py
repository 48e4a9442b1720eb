"""Role start-up helpers: a TOML scenario (docker compose) and the launcher's
scenario.json resolve to the same scenario and hash, so peers started either
way accept each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsllm.config import default_scenario_path, load_scenario
from fedsllm.errors import ConfigError
from fedsllm.launch import scenario_hash, write_scenario
from fedsllm.roles import load_resolved_scenario, register_info


def test_toml_and_json_resolve_identically(tmp_path) -> None:
    scenario = load_scenario()
    from_toml, hash_toml = load_resolved_scenario(default_scenario_path())
    from_json, hash_json = load_resolved_scenario(write_scenario(tmp_path, scenario))
    assert from_toml == from_json == scenario
    assert hash_toml == hash_json == scenario_hash(scenario)
    other = load_scenario(overrides=["seed=1"])
    assert scenario_hash(other) != hash_toml


def test_register_info_leaves_gain_to_the_channel_model() -> None:
    scenario = load_scenario(overrides=["channel.fading='rayleigh'"])
    info = register_info(scenario, 1, 500)
    assert info.gain_db == 0.0  # 0 = from placement, so per-round fading still applies
    assert info.distance_m > 0 and info.num_samples == 500
    assert info.flops == scenario.devices.client_flops
    fixed = load_scenario(overrides=["clients.profiles=[{gain_db=-90.0},{},{}]"])
    assert register_info(fixed, 0, 10).gain_db == -90.0


def _bad_scenarios(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "latin1.json").write_bytes(b'{"seed": "\xff"}')
    (tmp_path / "field.json").write_text(json.dumps({"seed": -1}))
    (tmp_path / "hash.json").write_text(json.dumps({"scenario_hash": 3}))
    (tmp_path / "bad.toml").write_text("seed = = 1")
    return [
        (tmp_path / "missing.json", "file not found"),
        (tmp_path / "dir.json", "is a directory, not a JSON file"),
        (tmp_path / "bad.json", "not valid JSON (Expecting property name"),
        (tmp_path / "list.json", "not a scenario (a JSON list, not an object)"),
        (tmp_path / "latin1.json", "not valid JSON (not UTF-8 text"),
        (tmp_path / "field.json", "not a valid scenario (seed: must be in [0, 2**63)"),
        (tmp_path / "hash.json", "not a valid scenario (scenario_hash: must be a string"),
        (tmp_path / "bad.toml", "not valid TOML"),
    ]


def test_a_bad_scenario_file_is_one_error_naming_its_source(tmp_path: Path) -> None:
    """Each way a role's --scenario file can be wrong was a traceback (FileNotFoundError,
    JSONDecodeError, "pop expected at most 1 argument") before it was one ConfigError."""
    for path, reason in _bad_scenarios(tmp_path):
        with pytest.raises(ConfigError) as caught:
            load_resolved_scenario(path, "FEDSLLM_SCENARIO")
        message = str(caught.value)
        assert message.startswith(f"FEDSLLM_SCENARIO: {reason}"), message
        assert message.endswith(f"got {str(path)!r}"), message
