"""Role start-up helpers: a TOML scenario (docker compose) and the launcher's
scenario.json resolve to the same scenario and hash, so peers started either
way accept each other."""

from __future__ import annotations

from fedsllm.config import default_scenario_path, load_scenario
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
