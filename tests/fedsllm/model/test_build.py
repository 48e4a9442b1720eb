"""Base model building: identical weights in every process, frozen, and supported families."""

from __future__ import annotations

import pytest
import torch

from fedsllm.config import DataConfig, ModelConfig, ScenarioConfig
from fedsllm.errors import ConfigError
from fedsllm.model.build import build_base_model, model_family
from fedsllm.model.pretrain import cache_dir


@pytest.mark.parametrize(("preset", "family"), [("tiny-llama", "llama"), ("tiny-gpt2", "gpt2")])
def test_build_is_seeded_frozen_and_in_eval(tiny_scenario, preset, family):
    first = build_base_model(tiny_scenario(preset), 259)
    second = build_base_model(tiny_scenario(preset), 259)
    other = build_base_model(tiny_scenario(preset, seed=1), 259)
    assert model_family(first) == family
    assert not first.training
    assert all(not p.requires_grad for p in first.parameters())
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert first.get_input_embeddings().weight.shape[0] == 259


def test_dropout_is_off_even_in_train_mode(tiny_scenario):
    model = build_base_model(tiny_scenario("tiny-gpt2"), 259)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.randint(3, 259, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    torch.testing.assert_close(
        model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0
    )


def test_model_family_rejects_other_architectures():
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            vocab_size=50,
        )
    )
    with pytest.raises(ConfigError, match="unsupported architecture.*llama, gpt2"):
        model_family(bert)


def test_local_checkpoint_is_loaded_and_frozen(tiny_scenario, tmp_path):
    source = build_base_model(tiny_scenario("tiny-llama", seed=4), 259)
    source.save_pretrained(tmp_path / "ckpt")
    scenario = ScenarioConfig(model=ModelConfig(path=str(tmp_path / "ckpt"), pretrain_steps=50))
    loaded = build_base_model(scenario, 999)
    assert model_family(loaded) == "llama"
    assert all(not p.requires_grad for p in loaded.parameters())
    a, b = source.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(cache_dir().glob("*.safetensors"))  # checkpoints are never pretrained


def test_missing_checkpoint_is_a_config_error(tmp_path):
    scenario = ScenarioConfig(model=ModelConfig(path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="model.path") as err:
        build_base_model(scenario, 259)
    # Not transformers' words for a hub repo id ("Repo id must use alphanumeric chars").
    assert err.value.reason == "no such directory (a local checkpoint)"


def test_gpt2_small_is_not_pretrained():
    scenario = ScenarioConfig(
        model=ModelConfig(preset="gpt2-small", pretrain_steps=300), data=DataConfig(seq_len=16)
    )
    model = build_base_model(scenario, 259)
    assert model.config.n_layer == 12
    assert not any(cache_dir().glob("*.safetensors"))
