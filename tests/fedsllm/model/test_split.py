"""Split equivalence: client part then server part == the unsplit model, bit for bit
up to float tolerance, for logits, loss and every LoRA gradient."""

from __future__ import annotations

import pytest
import torch

from fedsllm.config import AdapterConfig
from fedsllm.errors import ConfigError
from fedsllm.model.build import build_base_model, model_family
from fedsllm.model.lora import apply_lora
from fedsllm.model.split import part_key_to_full, positions_from_mask, split_model

CASES = [
    (preset, attn, side)
    for preset in ("tiny-llama", "tiny-gpt2")
    for attn in ("sdpa", "eager")
    for side in ("right", "left")
]


def _lora_params(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in peft_model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize(("preset", "attn", "side"), CASES)
def test_split_matches_unsplit_logits_loss_and_lora_grads(
    tiny_scenario, padded_batch, preset, attn, side
):
    scenario = tiny_scenario(preset, attn)
    adapter = AdapterConfig(rank=4, alpha=8.0)
    full_base = build_base_model(scenario, 259)
    family = model_family(full_base)
    full = apply_lora(full_base, adapter, family, seed=0)
    client_part, server_part = split_model(build_base_model(scenario, 259), 2)
    client = apply_lora(client_part, adapter, family, seed=0)
    server = apply_lora(server_part, adapter, family, seed=0)

    # Same random non-zero LoRA A and B everywhere, so every gradient is non-trivial.
    gen = torch.Generator().manual_seed(1)
    full_params = _lora_params(full)
    with torch.no_grad():
        for param in full_params.values():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        for part, offset in ((client, 0), (server, 2)):
            for name, param in _lora_params(part).items():
                param.copy_(full_params[part_key_to_full(name, family, offset)])
    num_mapped = len(_lora_params(client)) + len(_lora_params(server))
    assert num_mapped == len(full_params) > 0

    ids, mask, labels = padded_batch(side)
    out = full(
        input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), labels=labels
    )
    out.loss.backward()

    # The wire protocol: activations cross detached; their gradient comes back.
    hidden = client(ids, mask)
    smashed = hidden.detach().requires_grad_(True)
    logits, loss = server(smashed, mask, labels)
    loss.backward()
    hidden.backward(smashed.grad)

    real = mask.bool()
    torch.testing.assert_close(logits[real], out.logits[real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, out.loss, rtol=1e-6, atol=1e-7)
    for part, offset in ((client, 0), (server, 2)):
        for name, param in _lora_params(part).items():
            ref = full_params[part_key_to_full(name, family, offset)].grad
            assert param.grad is not None and ref is not None, name
            assert ref.abs().sum() > 0, name
            torch.testing.assert_close(param.grad, ref, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_unpadded_split_matches_default_positions(tiny_scenario, preset):
    scenario = tiny_scenario(preset)
    model = build_base_model(scenario, 259)
    ids = torch.randint(3, 259, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    expected = model(input_ids=ids, attention_mask=mask).logits
    client, server = split_model(build_base_model(scenario, 259), 1)
    logits, loss = server(client(ids, mask), mask)
    assert loss is None
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("split_layer", [0, 4, -1, 7])
def test_split_layer_out_of_range_is_a_config_error(tiny_scenario, split_layer):
    model = build_base_model(tiny_scenario(), 259)
    with pytest.raises(ConfigError, match=r"split\.split_layer.*\[1, 3\]"):
        split_model(model, split_layer)


def test_server_head_is_independent_of_tied_embedding(tiny_scenario):
    model = build_base_model(tiny_scenario("tiny-gpt2"), 259)
    assert model.lm_head.weight is model.transformer.wte.weight  # GPT-2 ties them
    client, server = split_model(model, 2)
    assert server.lm_head.weight.data_ptr() != client.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(server.lm_head.weight, client.embed_tokens.weight)
    assert not server.lm_head.weight.requires_grad
    with torch.no_grad():
        server.lm_head.weight.add_(1.0)
    assert not torch.equal(server.lm_head.weight, client.embed_tokens.weight)


def test_parts_hold_the_right_blocks(tiny_scenario):
    model = build_base_model(tiny_scenario("tiny-llama"), 259)
    blocks = list(model.model.layers)
    client, server = split_model(model, 3)
    assert list(client.layers) == blocks[:3]
    assert list(server.layers) == blocks[3:]
    assert server.layer_offset == 3 and server.num_layers == 1


def test_positions_from_mask_left_and_right():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize(
    ("family", "key", "offset", "expected"),
    [
        (
            "llama",
            "base_model.model.layers.1.self_attn.q_proj.lora_A.weight",
            2,
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
        ),
        (
            "gpt2",
            "base_model.model.layers.0.attn.c_attn.lora_B.weight",
            0,
            "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
        ),
        (
            "gpt2",
            "base_model.model.lm_head.lora_A.weight",
            2,
            "base_model.model.lm_head.lora_A.weight",
        ),
        ("llama", "embed_tokens.weight", 0, "model.embed_tokens.weight"),
    ],
)
def test_part_key_to_full(family, key, offset, expected):
    assert part_key_to_full(key, family, offset) == expected
