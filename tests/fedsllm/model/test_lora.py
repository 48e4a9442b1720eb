"""LoRA on split parts, and adapter bytes: exact round trip and strict validation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from fedsllm.config import AdapterConfig
from fedsllm.errors import ConfigError, WireError
from fedsllm.model.build import build_base_model
from fedsllm.model.lora import (
    adapter_from_bytes,
    adapter_state,
    adapter_to_bytes,
    apply_lora,
    bytes_to_state,
    load_adapter,
    state_to_bytes,
)
from fedsllm.model.split import split_model


def _client(tiny_scenario, preset="tiny-llama", adapter=None, seed=0):
    family = "llama" if preset == "tiny-llama" else "gpt2"
    client, _server = split_model(build_base_model(tiny_scenario(preset), 259), 2)
    return apply_lora(client, adapter or AdapterConfig(rank=4), family, seed=seed)


def _randomize(peft_model, seed=5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen))


def _snapshot(peft_model):
    return {k: v.clone() for k, v in adapter_state(peft_model).items()}


@pytest.mark.parametrize(
    ("preset", "targets"), [("tiny-llama", ("q_proj", "v_proj")), ("tiny-gpt2", ("c_attn",))]
)
def test_default_targets_and_only_lora_trainable(tiny_scenario, preset, targets):
    model = _client(tiny_scenario, preset)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # Two blocks, one A and one B per adapted module.
    assert len(trainable) == 2 * 2 * len(targets)
    assert all(any(t in n for t in targets) for n in trainable)


def test_lora_init_is_seeded_and_leaves_global_rng_alone(tiny_scenario):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = _snapshot(_client(tiny_scenario, seed=7))
    after = torch.rand(1)
    second = _snapshot(_client(tiny_scenario, seed=7))
    other = _snapshot(_client(tiny_scenario, seed=8))
    assert torch.equal(before, after)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


def test_unmatched_targets_are_a_config_error(tiny_scenario):
    client, _ = split_model(build_base_model(tiny_scenario(), 259), 2)
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        apply_lora(client, AdapterConfig(target_modules=("no_such_module",)), "llama")


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_adapter_bytes_round_trip_exactly(tiny_scenario, preset):
    source = _client(tiny_scenario, preset)
    _randomize(source)
    data = adapter_to_bytes(source)
    target = _client(tiny_scenario, preset)
    state = adapter_from_bytes(data, target)
    load_adapter(target, state)
    want, got = adapter_state(source), adapter_state(target)
    assert want.keys() == got.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype
        assert torch.equal(got[key], want[key]), key
    assert adapter_to_bytes(target) == data


def test_state_bytes_helpers_round_trip():
    state = {"a": torch.arange(6, dtype=torch.float32).view(2, 3).t(), "b": torch.ones(1)}
    back = bytes_to_state(state_to_bytes(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def _good_state(tiny_scenario):
    model = _client(tiny_scenario)
    _randomize(model)
    return {k: v.clone() for k, v in adapter_state(model).items()}


def _drop_one(state):
    key = sorted(state)[0]
    return {k: v for k, v in state.items() if k != key}, key, "missing key"


def _add_one(state):
    key = "base_model.model.layers.9.self_attn.q_proj.lora_A.weight"
    return {**state, key: torch.zeros(4, 64)}, key, "unexpected key"


def _reshape(state):
    key = sorted(state)[0]
    return {**state, key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])}, key, "shape"


def _to_double(state):
    key = sorted(state)[-1]
    return {**state, key: state[key].double()}, key, "dtype"


def _to_int(state):
    key = sorted(state)[-1]
    return {**state, key: state[key].to(torch.int32)}, key, "dtype"


def _nan(state):
    key = sorted(state)[1]
    bad = state[key].clone()
    bad[0, 0] = float("nan")
    return {**state, key: bad}, key, "NaN"


def _inf(state):
    key = sorted(state)[1]
    bad = state[key].clone()
    bad[-1, -1] = float("inf")
    return {**state, key: bad}, key, "infinite"


@pytest.mark.parametrize(
    "corrupt", [_drop_one, _add_one, _reshape, _to_double, _to_int, _nan, _inf]
)
def test_adapter_from_bytes_rejects_and_leaves_model_unchanged(tiny_scenario, corrupt):
    bad_state, key, reason = corrupt(_good_state(tiny_scenario))
    receiver = _client(tiny_scenario)
    _randomize(receiver, seed=9)
    before = _snapshot(receiver)
    with pytest.raises(WireError, match=reason) as info:
        adapter_from_bytes(save(bad_state), receiver)
    assert key in info.value.field
    after = adapter_state(receiver)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "blob", [b"", b"garbage bytes", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}", b"\xff" * 64]
)
def test_adapter_from_bytes_rejects_garbage(tiny_scenario, blob):
    receiver = _client(tiny_scenario)
    before = _snapshot(receiver)
    with pytest.raises(WireError, match="not a valid safetensors blob"):
        adapter_from_bytes(blob, receiver)
    after = adapter_state(receiver)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_from_bytes_rejects_non_bytes(tiny_scenario):
    with pytest.raises(WireError, match="expected safetensors bytes"):
        adapter_from_bytes("not bytes", _client(tiny_scenario))  # type: ignore[arg-type]


def test_adapter_of_other_rank_is_rejected(tiny_scenario):
    sender = _client(tiny_scenario, adapter=AdapterConfig(rank=8))
    with pytest.raises(WireError, match="shape"):
        adapter_from_bytes(adapter_to_bytes(sender), _client(tiny_scenario))
