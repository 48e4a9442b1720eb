"""count_model against real built models and real peft adapters (tiny presets)."""

from __future__ import annotations

import pytest
import torch

from fedsllm.config import AdapterConfig, ScenarioConfig, SplitConfig
from fedsllm.errors import ConfigError
from fedsllm.model.counts import count_model, count_scenario
from fedsllm.model.presets import preset_config


def _build(preset: str, meta: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = preset_config(preset)
    if meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def _block_index(name: str) -> int | None:
    for marker in (".layers.", ".h."):
        if marker in name:
            return int(name.split(marker)[1].split(".")[0])
    return None


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "gpt2-small"])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_param_counts_match_built_model(preset: str, split: int) -> None:
    model = _build(preset, meta=True)
    client = server = 0
    for name, p in model.named_parameters():
        idx = _block_index(name)
        if idx is not None:
            if idx < split:
                client += p.numel()
            else:
                server += p.numel()
        elif "embed" in name or ".wte." in name or ".wpe." in name:
            client += p.numel()
        else:
            server += p.numel()
    # GPT-2 ties lm_head to wte; after the split the server holds its own copy.
    if preset != "tiny-llama":
        server += model.lm_head.weight.numel()
    counts = count_model(model.config, split, AdapterConfig(), 32)
    assert (counts.client_params, counts.server_params) == (client, server)


@pytest.mark.parametrize(
    "preset,targets",
    [
        ("tiny-llama", ()),
        (
            "tiny-llama",
            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ),
        ("tiny-gpt2", ()),
        ("tiny-gpt2", ("c_attn", "c_proj", "c_fc")),
    ],
)
@pytest.mark.parametrize("rank", [4, 8])
def test_lora_params_and_bytes_match_peft(preset: str, targets: tuple[str, ...], rank: int) -> None:
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict

    from fedsllm.config import AdapterConfig
    from fedsllm.model.lora import lora_config

    model = _build(preset)
    family = "llama" if preset == "tiny-llama" else "gpt2"
    # The config training really uses, so counts are held against the model's LoRA.
    cfg = lora_config(AdapterConfig(rank=rank, alpha=16.0, target_modules=targets), family)
    peft_model = get_peft_model(model, cfg)
    state = get_peft_model_state_dict(peft_model)
    split = 2
    client_bytes = sum(
        t.numel() * t.element_size() for k, t in state.items() if _block_index(k) < split
    )
    server_bytes = sum(
        t.numel() * t.element_size() for k, t in state.items() if _block_index(k) >= split
    )
    counts = count_model(model.config, split, AdapterConfig(rank=rank, target_modules=targets), 16)
    assert counts.client_adapter_bytes == client_bytes
    assert counts.server_adapter_bytes == server_bytes
    assert counts.client_lora_params * 4 == client_bytes


def test_forward_flops_match_torch_flop_counter() -> None:
    """Matmul FLOPs of a real eager forward = 2 x params x T + full (non-causal) attention."""
    from torch.utils.flop_counter import FlopCounterMode

    from fedsllm.model.presets import preset_config as pc

    cfg = pc("tiny-llama", attn_implementation="eager")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg).eval()
    seq = 24
    ids = torch.randint(3, 200, (1, seq))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(input_ids=ids)
    measured = fc.get_total_flops()
    counts = count_model(cfg, 2, AdapterConfig(rank=1, target_modules=("q_proj",)), seq)
    # Remove the (tiny) LoRA term and swap the causal attention count for the
    # eager kernel's full T x T products, which is what the counter sees.
    lora = 2.0 * seq * counts.client_lora_params / 2 * 4  # both halves, 2 layers each
    d_attn = cfg.num_attention_heads * cfg.head_dim
    causal = 4 * 2.0 * seq * (seq + 1) * d_attn
    full = 4 * 4.0 * seq * seq * d_attn
    predicted = counts.client_fwd_flops + counts.server_fwd_flops - lora - causal + full
    assert measured == pytest.approx(predicted, rel=1e-9)


def test_bytes_and_backward_terms() -> None:
    cfg = preset_config("tiny-llama")
    fp32 = count_model(cfg, 2, AdapterConfig(), 64, "float32")
    bf16 = count_model(cfg, 2, AdapterConfig(), 64, "bfloat16")
    assert fp32.smashed_bytes == 64 * 64 * 4 + 2 * 64 * 8
    assert bf16.gradient_bytes == 64 * 64 * 2
    assert fp32.smashed_bytes_per_batch(8) == 8 * fp32.smashed_bytes
    # Backward = forward + LoRA weight gradients (2 x LoRA params per token).
    assert fp32.client_bwd_flops - fp32.client_fwd_flops == 2 * 64 * fp32.client_lora_params
    assert fp32.phi_c == fp32.client_fwd_flops + fp32.client_bwd_flops


def test_counts_of_gpt2_small_match_facts() -> None:
    """Counted by hand: client adapter 196,608 B on c_attn at split 2 (r=8), server 983,040 B."""
    counts = count_model(preset_config("gpt2-small"), 2, AdapterConfig(rank=8), 64)
    assert counts.client_adapter_bytes == 196_608
    assert counts.server_adapter_bytes == 983_040
    assert counts.smashed_bytes - 2 * 64 * 8 == 64 * 768 * 4


def test_count_scenario_uses_the_scenario() -> None:
    scen = ScenarioConfig(split=SplitConfig(split_layer=3, wire_dtype="float16"))
    counts = count_scenario(scen)
    assert (counts.split_layer, counts.wire_dtype, counts.seq_len) == (
        3,
        "float16",
        scen.data.seq_len,
    )


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"split_layer": 4}, "split.split_layer"),
        ({"split_layer": 0}, "split.split_layer"),
        ({"wire_dtype": "int8"}, "split.wire_dtype"),
        ({"adapter": AdapterConfig(target_modules=("c_attn",))}, "adapter.target_modules"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    args = {"split_layer": 2, "adapter": AdapterConfig(), "seq_len": 16, **kwargs}
    with pytest.raises(ConfigError) as err:
        count_model(preset_config("tiny-llama"), **args)
    assert err.value.path == field
