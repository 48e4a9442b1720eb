"""Turn a finished run directory into one standard PEFT adapter for the whole model.

During a run the client adapter and the server adapter live on different
processes and use block indices local to their part. `export_run` rebuilds
the run's base model from its scenario (same seed, same cached pretraining,
so the same weights), checks both adapter files against the split parts,
renames their keys to the full model's (server blocks shifted by the split
layer) and saves them with peft's own `save_pretrained`. For a preset base
it also saves the base model, an equivalent transformers tokenizer and a
short tokenizer description under ``OUT_DIR/base``, so that

    base = AutoModelForCausalLM.from_pretrained(OUT_DIR / "base")
    model = PeftModel.from_pretrained(base, OUT_DIR)

needs nothing from this project. Reading the run directory's layout is the
only knowledge of `fedsllm run` this module has (docs/INTERFACES.md).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError, WireError

log = logging.getLogger(__name__)

CLIENT_ADAPTER = Path("adapters") / "client_global.safetensors"
SERVER_ADAPTER = Path("adapters") / "server.safetensors"
TOKENIZER_INFO = "fedsllm_tokenizer.json"
"""Written next to the exported base: how token ids map to text."""


def read_run_scenario(run_dir: Path) -> Any:
    """The ScenarioConfig stored in RUN_DIR/scenario.json (ConfigError naming the file)."""
    from fedsllm.config import from_dict

    path = run_dir / "scenario.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found (is this a run directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), None, f"not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, "must hold a JSON object")
    data.pop("scenario_hash", None)  # the launcher stores the hash beside the fields
    try:
        return from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.path}", err.value, err.reason) from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except OSError as err:
        raise ConfigError(str(path), None, f"not readable ({err})") from None


def _checked_state(path: Path, peft_part: Any) -> dict[str, Any]:
    from fedsllm.model.lora import adapter_from_bytes

    try:
        return adapter_from_bytes(_read_bytes(path), peft_part, field=path.name)
    except WireError as err:
        raise ConfigError(
            str(path), err.field, f"adapter does not fit the run's model: {err.reason}"
        ) from None


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """A self-describing record of the tokenizer the adapter was trained with."""
    info: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }
    if type(tokenizer).__name__ == "ByteTokenizer":
        info["encoding"] = (
            "UTF-8 bytes; token id = byte value + 3; ids 0, 1, 2 are pad, "
            "bos, eos; a sample is bos + bytes (+ eos)"
        )
    return info


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what ByteLevel pre-tokenizing uses)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def byte_tokenizer_hf(tokenizer: Any) -> Any:
    """A transformers fast tokenizer that encodes exactly like `ByteTokenizer`.

    Byte-level BPE with no merges: each UTF-8 byte b becomes id b + 3, and
    the three specials keep ids 0, 1, 2, so `AutoTokenizer.from_pretrained`
    on the exported base needs nothing from this project.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    offset = tokenizer.vocab_size - 256
    vocab = {"<pad>": tokenizer.pad_id, "<bos>": tokenizer.bos_id, "<eos>": tokenizer.eos_id}
    vocab.update({char: byte + offset for byte, char in _byte_to_unicode().items()})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write OUT_DIR/adapter_config.json + adapter_model.safetensors (and OUT_DIR/base
    for a preset). Returns OUT_DIR. Missing or malformed inputs raise ConfigError
    naming the file."""
    from peft import get_peft_model

    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import build_base_model, model_family
    from fedsllm.model.lora import (
        adapter_state,
        apply_lora,
        load_adapter,
        lora_config,
        validate_state,
    )
    from fedsllm.model.split import part_key_to_full, split_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    scenario = read_run_scenario(run_dir)
    for rel in (CLIENT_ADAPTER, SERVER_ADAPTER):
        if not (run_dir / rel).is_file():
            raise ConfigError(str(run_dir / rel), None, "file not found")
    tokenizer = load_tokenizer(scenario)
    model = build_base_model(scenario, tokenizer.vocab_size)
    family = model_family(model)
    split_layer = scenario.split.split_layer

    # The parts only serve to check the files; they get their own copy of the weights
    # because LoRA injection edits the modules it wraps.
    client, server = split_model(copy.deepcopy(model), split_layer)
    client_state = _checked_state(
        run_dir / CLIENT_ADAPTER, apply_lora(client, scenario.adapter, family)
    )
    server_state = _checked_state(
        run_dir / SERVER_ADAPTER, apply_lora(server, scenario.adapter, family)
    )
    full_state = {part_key_to_full(k, family, 0): v for k, v in client_state.items()}
    full_state.update(
        {part_key_to_full(k, family, split_layer): v for k, v in server_state.items()}
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    if scenario.model.path:
        base_ref = scenario.model.path
    else:
        base_dir = out_dir / "base"
        model.save_pretrained(base_dir)
        from fedsllm.data.tokenizer import ByteTokenizer

        if isinstance(tokenizer, ByteTokenizer):
            byte_tokenizer_hf(tokenizer).save_pretrained(base_dir)
        (base_dir / TOKENIZER_INFO).write_text(
            json.dumps(tokenizer_info(tokenizer), indent=2) + "\n", encoding="utf-8"
        )
        base_ref = str(base_dir.resolve())

    full = get_peft_model(model, lora_config(scenario.adapter, family))
    full.peft_config["default"].base_model_name_or_path = base_ref
    try:
        validate_state(full_state, adapter_state(full), field="exported adapter")
    except WireError as err:
        raise ConfigError(
            str(run_dir / "adapters"),
            err.field,
            f"client and server adapters do not cover the full model: {err.reason}",
        ) from None
    load_adapter(full, full_state)
    full.save_pretrained(out_dir)
    log.info(
        "exported %d adapter tensors (%s, split at %d) to %s; base: %s",
        len(full_state),
        family,
        split_layer,
        out_dir,
        base_ref,
    )
    return out_dir
