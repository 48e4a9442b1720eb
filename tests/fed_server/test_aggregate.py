"""FedAvg arithmetic (fedsllm/model/fedavg.py), the fed server's adapter checks and
checkpoint reload (fed_server/aggregate.py, checkpoint.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fed_server.aggregate import (
    check_compatible,
    parse_adapter,
    serialize_adapter,
)
from fed_server.checkpoint import load_checkpoint, save_checkpoint
from fedsllm.errors import WireError
from fedsllm.model.fedavg import fedavg


def _state(value: float, dtype: str = "float32") -> dict[str, np.ndarray]:
    return {
        "a.lora_A.weight": np.full((2, 3), value, dtype=dtype),
        "a.lora_B.weight": np.arange(6, dtype=dtype).reshape(3, 2) * value,
    }


def test_fedavg_weights_by_data_size() -> None:
    states = [_state(1.0), _state(2.0), _state(10.0)]
    sizes = [100, 300, 600]
    merged = fedavg(states, sizes)
    # (1*100 + 2*300 + 10*600) / 1000 = 6.7
    np.testing.assert_allclose(merged["a.lora_A.weight"], np.full((2, 3), 6.7), rtol=1e-6)
    np.testing.assert_allclose(
        merged["a.lora_B.weight"], np.arange(6).reshape(3, 2) * 6.7, rtol=1e-6
    )
    assert merged["a.lora_A.weight"].dtype == np.float32


def test_fedavg_unequal_sizes_differs_from_plain_mean() -> None:
    states = [_state(0.0), _state(4.0)]
    merged = fedavg(states, [3, 1])
    assert merged["a.lora_A.weight"][0, 0] == pytest.approx(1.0)
    assert merged["a.lora_A.weight"][0, 0] != pytest.approx(2.0)


def test_fedavg_is_order_independent() -> None:
    rng = np.random.default_rng(0)
    states = [{"w": rng.standard_normal((4, 4)).astype("float32")} for _ in range(5)]
    sizes = [5, 1, 9, 2, 7]
    forward = fedavg(states, sizes)["w"]
    backward = fedavg(states[::-1], sizes[::-1])["w"]
    np.testing.assert_array_equal(forward, backward)


def test_fedavg_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="sum to > 0"):
        fedavg([_state(1.0)], [0])
    with pytest.raises(ValueError, match="one weight per state"):
        fedavg([_state(1.0)], [1, 2])


def test_serialize_round_trip_is_exact() -> None:
    state = _state(0.123456789)
    back = parse_adapter(serialize_adapter(state))
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.pop("a.lora_B.weight"), "keys"),
        (lambda s: s.update({"a.lora_A.weight": np.zeros((3, 3), "float32")}), "shape"),
        (lambda s: s.update({"a.lora_A.weight": np.zeros((2, 3), "float64")}), "dtype"),
        (lambda s: s["a.lora_A.weight"].__setitem__((0, 0), np.nan), "NaN"),
    ],
)
def test_check_compatible_refuses(mutate, match) -> None:
    state = _state(1.0)
    mutate(state)
    with pytest.raises(WireError, match=match):
        check_compatible(state, _state(1.0))


def test_parse_adapter_refuses_garbage() -> None:
    with pytest.raises(WireError, match="safetensors"):
        parse_adapter(b"\x00\x01 not safetensors")


def test_checkpoint_reload(tmp_path) -> None:
    assert load_checkpoint(tmp_path).completed_round == -1
    blob0 = serialize_adapter(_state(1.0))
    blob1 = serialize_adapter(_state(2.0))
    save_checkpoint(tmp_path, 0, blob0)
    save_checkpoint(tmp_path, 1, blob1)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.completed_round == 1
    assert ckpt.adapter == blob1
    assert (tmp_path / "adapters" / "client_global_round0.safetensors").read_bytes() == blob0
    assert (tmp_path / "adapters" / "client_global.safetensors").read_bytes() == blob1
    assert not list(tmp_path.rglob("*.tmp"))
