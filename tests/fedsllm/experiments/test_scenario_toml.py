"""The scenario TOML writer: what it writes, tomllib and fedsllm.config read back unchanged."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest

from fedsllm.config import ScenarioConfig, from_dict, load_scenario
from fedsllm.experiments.scenario_toml import dumps_toml, toml_value


def same(a: Any, b: Any) -> bool:
    """Equality that counts NaN == NaN (the scenario keeps NaN as "use the default")."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_default_scenario_round_trips_exactly() -> None:
    scenario = load_scenario(None)
    data = scenario.to_dict()
    text = dumps_toml(data, "a comment\nsecond line")
    back = tomllib.loads(text)
    assert back == data
    assert from_dict(back) == scenario
    assert text.startswith("# a comment\n# second line\n")
    assert text.isascii()


def test_profiles_nan_and_awkward_strings_round_trip() -> None:
    base = load_scenario(None, ["clients.num_clients=3"])
    data = base.to_dict()
    data["name"] = 'quote " back \\ tab\t newline\n unicode \u00e9\u4e2d'
    data["adapter"]["target_modules"] = ["q_proj", "v_proj"]
    data["data"]["client_fractions"] = [0.5, 0.25, 0.25]
    data["clients"]["profiles"] = [
        {"flops": 1e9, "tx_power_dbm": math.nan, "distance_m": 0.0, "gain_db": -95.5},
        {"flops": 0.0, "tx_power_dbm": 23.0, "distance_m": 120.0, "gain_db": math.nan},
        {"flops": 3.5e12, "tx_power_dbm": -1.0, "distance_m": 1e-3, "gain_db": math.nan},
    ]
    text = dumps_toml(data)
    back = tomllib.loads(text)
    assert same(back, data)
    assert "[[clients.profiles]]" in text
    scenario = from_dict(back)
    assert isinstance(scenario, ScenarioConfig)
    second = scenario.clients.profiles[1]
    assert (second.flops, second.tx_power_dbm, second.distance_m) == (0.0, 23.0, 120.0)
    assert math.isnan(second.gain_db)
    assert scenario.clients.profiles[0].gain_db == -95.5
    assert math.isnan(scenario.clients.profiles[0].tx_power_dbm)
    assert same(scenario.to_dict(), from_dict(data).to_dict())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-17, "-17"),
        (0.5, "0.5"),
        (1e-06, "1e-06"),
        (2e16, "2e+16"),
        (20e6, "20000000.0"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        ('a"b', '"a\\"b"'),
        ([], "[]"),
        ([1, 2.5, "x"], '[1, 2.5, "x"]'),
        ([[1], []], "[[1], []]"),
        ({"k": 1}, "{ k = 1 }"),
    ],
)
def test_values(value: Any, text: str) -> None:
    assert toml_value(value) == text
    back = tomllib.loads(f"v = {text}")["v"]
    assert same(back, value)


def test_floats_stay_floats_and_ints_stay_ints() -> None:
    back = tomllib.loads(dumps_toml({"f": 3.0, "i": 3, "big": 1e300, "tiny": 5e-324}))
    assert back == {"f": 3.0, "i": 3, "big": 1e300, "tiny": 5e-324}
    assert isinstance(back["f"], float) and isinstance(back["i"], int)


def test_keys_that_are_not_bare_are_quoted() -> None:
    data = {"plain_key-1": 1, "with space": 2, "dot.ted": {"x": "y"}}
    text = dumps_toml(data)
    assert '"with space" = 2' in text
    assert '["dot.ted"]' in text
    assert tomllib.loads(text) == data


def test_scalars_after_a_nested_table_stay_in_their_table() -> None:
    data = {"t": {"sub": {"a": 1}, "b": 2}, "c": 3}
    assert tomllib.loads(dumps_toml(data)) == data


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        toml_value({1, 2})
    with pytest.raises(TypeError, match="keys"):
        dumps_toml({1: 2})  # type: ignore[dict-item]
