"""Export: a run directory becomes one PEFT adapter that loads with plain transformers +
peft and gives the split model's logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedsllm.cli import main as cli_main
from fedsllm.data.tokenizer import ByteTokenizer
from fedsllm.errors import ConfigError
from fedsllm.launch import write_scenario
from fedsllm.model.build import build_base_model, model_family
from fedsllm.model.export import export_run
from fedsllm.model.lora import adapter_to_bytes, apply_lora
from fedsllm.model.split import positions_from_mask, split_model


def _write_run(run_dir, scenario):
    """A fake finished run: scenario.json and random non-zero client/server adapters."""
    model = build_base_model(scenario, 259)
    family = model_family(model)
    client, server = split_model(model, scenario.split.split_layer)
    client = apply_lora(client, scenario.adapter, family)
    server = apply_lora(server, scenario.adapter, family)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for part in (client, server):
            for name, param in part.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    (run_dir / "adapters").mkdir(parents=True)
    # Exactly what the launcher writes (the fields plus the scenario hash).
    write_scenario(run_dir, scenario)
    (run_dir / "adapters" / "client_global.safetensors").write_bytes(adapter_to_bytes(client))
    (run_dir / "adapters" / "server.safetensors").write_bytes(adapter_to_bytes(server))
    return client, server


@pytest.mark.parametrize(
    ("preset", "blocks"), [("tiny-llama", "model.layers"), ("tiny-gpt2", "transformer.h")]
)
def test_export_loads_with_plain_peft_and_matches_split_logits(
    tiny_scenario, padded_batch, tmp_path, preset, blocks
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scenario = tiny_scenario(preset, pretrain_steps=5)
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    client, server = _write_run(run_dir, scenario)

    assert export_run(run_dir, out_dir) == out_dir

    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out_dir / "base").resolve())
    assert config["r"] == scenario.adapter.rank
    keys = load_file(out_dir / "adapter_model.safetensors").keys()
    for index in range(4):  # server blocks 2, 3 are shifted back into place
        assert any(f"base_model.model.{blocks}.{index}." in k for k in keys), index
    assert (out_dir / "base" / "fedsllm_tokenizer.json").is_file()
    hf_tokenizer = AutoTokenizer.from_pretrained(out_dir / "base")
    text = "Tom eats near the river. cafe\u00e9 [x] 12\n"
    assert hf_tokenizer.encode(text, add_special_tokens=False) == ByteTokenizer().encode(text)
    assert hf_tokenizer.decode(ByteTokenizer().encode(text)) == text
    assert (hf_tokenizer.pad_token_id, hf_tokenizer.bos_token_id) == (0, 1)
    assert hf_tokenizer.eos_token_id == 2 and len(hf_tokenizer) == 259

    base = AutoModelForCausalLM.from_pretrained(out_dir / "base")
    full = PeftModel.from_pretrained(base, out_dir)
    full.eval()
    ids, mask, _labels = padded_batch("left")
    with torch.no_grad():
        expected, _ = server(client(ids, mask), mask)
        got = full(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)
        ).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)
    # The adapters matter: the bare base gives other logits.
    with full.disable_adapter(), torch.no_grad():
        bare = full(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)
        ).logits
    assert (bare[real] - expected[real]).abs().max() > 1e-3


def test_cli_export_writes_adapter_and_reports_bad_input(tiny_scenario, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _write_run(run_dir, tiny_scenario("tiny-gpt2"))
    assert cli_main(["export", str(run_dir), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 2
    assert "scenario.json" in capsys.readouterr().err


def test_export_errors_name_the_file(tiny_scenario, tmp_path):
    run_dir = tmp_path / "run"
    _write_run(run_dir, tiny_scenario())
    out = tmp_path / "out"

    server_file = run_dir / "adapters" / "server.safetensors"
    good_server = server_file.read_bytes()
    server_file.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="server.safetensors"):
        export_run(run_dir, out)

    # An adapter from another rank does not fit the scenario's model.
    other = tiny_scenario()
    client, _ = split_model(build_base_model(other, 259), 2)
    from fedsllm.config import AdapterConfig

    wrong = apply_lora(client, AdapterConfig(rank=2), "llama")
    server_file.write_bytes(good_server)
    (run_dir / "adapters" / "client_global.safetensors").write_bytes(adapter_to_bytes(wrong))
    with pytest.raises(ConfigError, match="client_global.safetensors.*shape"):
        export_run(run_dir, out)

    (run_dir / "adapters" / "client_global.safetensors").unlink()
    with pytest.raises(ConfigError, match="client_global.safetensors.*file not found"):
        export_run(run_dir, out)

    (run_dir / "scenario.json").write_text("{not json")
    with pytest.raises(ConfigError, match="scenario.json.*JSON"):
        export_run(run_dir, out)

    (run_dir / "scenario.json").write_text(json.dumps({"split": {"split_layer": 0}}))
    with pytest.raises(ConfigError, match=r"scenario.json: split\.split_layer"):
        export_run(run_dir, out)
