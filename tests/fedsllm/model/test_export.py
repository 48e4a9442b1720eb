"""Export: a run directory becomes one PEFT adapter that loads with plain transformers +
peft and gives the split model's logits, with a tokenizer that tokenizes like training,
a filled-in model card, and no progress bars or FutureWarnings on the way."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedsllm.cli import main as cli_main
from fedsllm.config import ModelConfig
from fedsllm.data.dataset import tokenize_texts
from fedsllm.data.tokenizer import ByteTokenizer, load_tokenizer
from fedsllm.errors import ConfigError
from fedsllm.launch import scenario_hash, write_scenario
from fedsllm.model.build import build_base_model, model_family
from fedsllm.model.export import byte_tokenizer_hf, export_run
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
    assert "RUN_DIR: is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()  # nothing written for a refused export
    # Refused after OUT_DIR was made (trial 5: a damaged adapter left an empty one).
    (run_dir / "adapters" / "server.safetensors").write_bytes(b"junk")
    assert cli_main(["export", str(run_dir), str(tmp_path / "new" / "out3")]) == 2
    assert "server.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_export_never_writes_into_a_directory_that_holds_anything(tiny_scenario, tmp_path):
    """Not a used directory, and above all not the run directory itself (its
    base/ is what the fed server serves): refused, and nothing in it changes.
    (An earlier export is rewritten: see the model card test below.)"""
    run_dir = tmp_path / "run"
    _write_run(run_dir, tiny_scenario())
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")

    def files(root):
        return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for out, reason in ((used, "not an earlier export"), (run_dir, "is the run directory")):
        before = files(out)
        with pytest.raises(ConfigError, match=f"OUT_DIR.*{reason}"):
            export_run(run_dir, out)
        assert files(out) == before
    for bad_run in (tmp_path / "empty", used / "keep.txt"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(ConfigError):
            export_run(bad_run, tmp_path / "never")
        assert not (tmp_path / "never").exists()


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


TEXTS = [
    "",
    "name[The Eagle], eatType[pub], food[French] => The Eagle is a French pub.",
    "Tom eats near the river. caf\u00e9 \u2603 [x] 12\n",
    "  leading spaces,\ttabs and \U0001f600",
]


def _training_rows(scenario, texts):
    """What training fed the model for each text: tokenize_texts' unpadded row."""
    tokenizer = load_tokenizer(scenario)
    data = tokenize_texts(texts, tokenizer, seq_len=512)
    return [
        ids[mask.bool()].tolist()
        for ids, mask in zip(data.input_ids, data.attention_mask, strict=True)
    ]


def _summary(rounds):
    """A summary.json as launchers before 2026-12-02 wrote it (NaN for 'not
    evaluated'; the launcher now writes null): the export still reads those."""
    return {
        "scenario": "default",
        "ok": True,
        "failed": None,
        "rounds": [
            {
                "round": r,
                "train_loss": train,
                "val_loss": val,
                "wall_s": 1.0,
                "num_clients": 3,
                "num_steps": 6,
            }
            for r, (train, val) in enumerate(rounds)
        ],
        "initial_val_loss": 2.6859,
        "final_val_loss": rounds[-1][1],
        "total_wall_s": 3.0,
        "links": [],
    }


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_exported_tokenizer_gives_training_ids(tiny_scenario, tmp_path, preset):
    from transformers import AutoTokenizer

    scenario = tiny_scenario(preset)
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    _write_run(run_dir, scenario)
    export_run(run_dir, out_dir)

    rows = _training_rows(scenario, TEXTS)
    for where in (out_dir / "base", out_dir):
        hf_tokenizer = AutoTokenizer.from_pretrained(where)
        for text, row in zip(TEXTS, rows, strict=True):
            assert row[0] == 1 and row[-1] == 2  # bos ... eos
            # bos + text; eos, which ends every training sample, is left for the caller.
            assert hf_tokenizer(text).input_ids == row[:-1], (where, text)
            assert hf_tokenizer(text).input_ids + [hf_tokenizer.eos_token_id] == row
            assert hf_tokenizer.decode(row, skip_special_tokens=True) == text
        batch = hf_tokenizer(TEXTS[1:3], padding=True).input_ids
        assert [ids[: len(row) - 1] for ids, row in zip(batch, rows[1:3], strict=True)] == [
            row[:-1] for row in rows[1:3]
        ]


def _checkpoint(tmp_path, tiny_scenario, with_bos):
    """A local checkpoint whose own tokenizer adds no bos (as GPT-2's), with or
    without a bos token of its own (training then puts eos in front)."""
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "ckpt"
    build_base_model(tiny_scenario(), 259).save_pretrained(path)
    backend = copy.deepcopy(byte_tokenizer_hf(ByteTokenizer()).backend_tokenizer)
    specials = {"pad_token": "<pad>", "eos_token": "<eos>"}
    if with_bos:
        specials["bos_token"] = "<bos>"
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, add_bos_token=False, **specials)
    plain.save_pretrained(path)
    assert plain("ab").input_ids == [100, 101]
    scenario = tiny_scenario()
    return dataclasses.replace(scenario, model=ModelConfig(path=str(path)))


@pytest.mark.parametrize("with_bos", [True, False])
def test_checkpoint_export_tokenizer_adds_training_bos(tiny_scenario, tmp_path, with_bos):
    from transformers import AutoTokenizer

    scenario = _checkpoint(tmp_path, tiny_scenario, with_bos)
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    _write_run(run_dir, scenario)
    export_run(run_dir, out_dir)

    assert not (out_dir / "base").exists()
    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == scenario.model.path
    hf_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    bos = 1 if with_bos else 2
    for text, row in zip(TEXTS, _training_rows(scenario, TEXTS), strict=True):
        assert row[0] == bos
        assert hf_tokenizer(text).input_ids == row[:-1], text
    card = (out_dir / "README.md").read_text()
    assert f"local checkpoint `{scenario.model.path}`" in card
    digest = _sha256(Path(scenario.model.path) / "model.safetensors")
    assert digest in card
    assert "What to expect" not in card  # the tiny-preset note is for presets only


def test_model_card_names_run_base_scenario_and_losses(tiny_scenario, tmp_path):
    from huggingface_hub import ModelCard

    scenario = tiny_scenario("tiny-llama")
    run_dir, out_dir = tmp_path / "my-run", tmp_path / "out"
    _write_run(run_dir, scenario)
    rounds = [(2.7357, math.nan), (2.1234, 1.9876)]
    (run_dir / "summary.json").write_text(json.dumps(_summary(rounds), indent=2))
    assert "NaN" in (run_dir / "summary.json").read_text()

    export_run(run_dir, out_dir)

    base_ref = str((out_dir / "base").resolve())
    card = ModelCard.load(out_dir / "README.md")
    assert card.data.base_model == base_ref
    assert card.data.library_name == "peft"
    assert {"lora", "peft", f"base_model:adapter:{base_ref}"} <= set(card.data.tags)
    text = card.text
    assert "More Information Needed" not in text  # not peft's blank template
    assert "`my-run`" in text and str(run_dir.resolve()) in text
    assert f"hash `{scenario_hash(scenario)}`" in text
    assert "preset `tiny-llama`" in text and "split layer 2" in text
    assert f"LoRA rank {scenario.adapter.rank}" in text
    assert _sha256(out_dir / "base" / "model.safetensors") in text
    assert "| before training | - | 2.6859 |" in text
    assert "| 0 | 2.7357 | - | 3 | 6 |" in text
    assert "| 1 | 2.1234 | 1.9876 | 3 | 6 |" in text
    assert "What to expect" in text and "model.path" in text


def test_model_card_without_summary_or_of_a_failed_run_says_so(tiny_scenario, tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    _write_run(run_dir, tiny_scenario())
    export_run(run_dir, out_dir)
    text = (out_dir / "README.md").read_text()
    assert "no readable `summary.json`" in text
    assert "More Information Needed" not in text

    summary = _summary([(2.5, math.nan)])
    summary.update(ok=False, failed={"process": "client_1", "reason": "exit code 1"})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    export_run(run_dir, out_dir)  # over the first export: the card is rewritten
    text = (out_dir / "README.md").read_text()
    assert "did not finish:** client_1 failed (exit code 1)" in text
    assert "| 0 | 2.5000 | - | 3 | 6 |" in text


def test_model_card_snippet_runs(tiny_scenario, tmp_path, capsys):
    """The card's 'How to load' code, run as written, loads the export and generates."""
    scenario = tiny_scenario("tiny-gpt2")
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    _write_run(run_dir, scenario)
    export_run(run_dir, out_dir)
    text = (out_dir / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert "AutoTokenizer.from_pretrained" in code and "PeftModel.from_pretrained" in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own card
    assert namespace["inputs"]["input_ids"][0, 0].item() == 1  # bos in front
    assert namespace["out"].shape[1] > namespace["inputs"]["input_ids"].shape[1]
    assert capsys.readouterr().out  # it printed the continuation


def test_export_prints_no_progress_bar_and_no_future_warning(tiny_scenario, tmp_path, capfd):
    run_dir = tmp_path / "run"
    _write_run(run_dir, tiny_scenario("tiny-llama"))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_run(run_dir, tmp_path / "out")
        assert not caught, [str(w.message) for w in caught]
        # Only the export is silenced: afterwards the same warning shows again.
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
    assert [w.category for w in caught] == [FutureWarning]
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "it/s" not in err, err
    from transformers.utils import logging as hf_logging

    assert hf_logging.set_tqdm_hook(None) is None  # the export's hook is gone


def test_the_readmes_example_generation_is_the_model_cards() -> None:
    """The README quotes the card's measured example; one measurement, two places."""
    from fedsllm.model.export import PRESET_NOTES

    readme = " ".join((Path(__file__).parents[3] / "README.md").read_text().split())
    quoted = re.search(r"with babble such as `([^`]+)`", readme)
    assert quoted is not None
    assert f"`{quoted.group(1)}`" in PRESET_NOTES["tiny-llama"]
