"""ByteTokenizer round trips and load_tokenizer's two paths."""

from __future__ import annotations

import dataclasses

import pytest

from fedsllm.config import ScenarioConfig
from fedsllm.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from fedsllm.errors import ConfigError


@pytest.mark.parametrize(
    "text",
    [
        "",
        "name[The Eagle], eatType[pub] => The Eagle is a pub.",
        "caf\u00e9 \u2603 \U0001f600",
        "\n\t",
    ],
)
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert all(3 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_byte_ids_and_specials() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
    assert tok.encode("A") == [ord("A") + 3]
    assert tok.encode("\x00\xff".encode("latin-1").decode("latin-1")) == [3, 3 + 0xC3, 3 + 0xBF]
    assert tok.decode([1, *tok.encode("hi"), 2, 0, 0]) == "hi"


def test_byte_decode_bad_utf8_is_replaced() -> None:
    tok = ByteTokenizer()
    assert tok.decode([0xFF + 3, ord("a") + 3]) == "\ufffda"


def test_load_tokenizer_default_is_bytes() -> None:
    assert isinstance(load_tokenizer(ScenarioConfig()), ByteTokenizer)


def _scenario_with_path(path: str) -> ScenarioConfig:
    base = ScenarioConfig()
    return dataclasses.replace(base, model=dataclasses.replace(base.model, path=path))


def test_load_tokenizer_missing_dir(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_tokenizer(_scenario_with_path(str(tmp_path / "nope")))
    assert err.value.path == "model.path"


@pytest.mark.parametrize("with_pad", [True, False])
def test_load_tokenizer_local_checkpoint(tmp_path, with_pad: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "[UNK]": 3, "the": 4, "eagle": 5, "pub": 6}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]"}
    if with_pad:
        specials["pad_token"] = "<pad>"
    PreTrainedTokenizerFast(tokenizer_object=backend, **specials).save_pretrained(tmp_path)

    tok = load_tokenizer(_scenario_with_path(str(tmp_path)))
    assert isinstance(tok, HFTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (7, 1, 2)
    assert tok.pad_id == (0 if with_pad else 2)
    ids = tok.encode("the eagle pub")
    assert ids == [4, 5, 6]
    assert tok.decode([1, *ids, 2]) == "the eagle pub"


def test_fast_start_modules_import_no_heavy_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fedsllm.data, fedsllm.data.tokenizer, fedsllm.data.generic, "
        "fedsllm.data.e2e, fedsllm.data.files; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_package_exports_resolve_lazily() -> None:
    import fedsllm.data as data

    assert data.ByteTokenizer is ByteTokenizer
    assert callable(data.build_federated_data) and callable(data.partition_indices)
    with pytest.raises(AttributeError):
        _ = data.not_a_name
