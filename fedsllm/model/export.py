"""Turn a finished run directory into one standard PEFT adapter for the whole model.

During a run the client adapter and the server adapter live on different
processes and use block indices local to their part. `export_run` rebuilds
the run's base model from its scenario (same seed, same cached pretraining,
so the same weights), checks both adapter files against the split parts,
renames their keys to the full model's (server blocks shifted by the split
layer) and saves them with peft's own `save_pretrained`. Beside the adapter
it writes a transformers tokenizer whose plain call gives the ids training
used (bos + text) and a model card (README.md) naming the run, the base, the
scenario and the losses. For a preset base it also saves the base model, the
same tokenizer and a short tokenizer description under ``OUT_DIR/base``, so
that

    tokenizer = AutoTokenizer.from_pretrained(OUT_DIR)
    base = AutoModelForCausalLM.from_pretrained(OUT_DIR / "base")
    model = PeftModel.from_pretrained(base, OUT_DIR)

needs nothing from this project. Reading the run directory's layout is the
only knowledge of `fedsllm run` this module has (docs/INTERFACES.md).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedsllm.errors import NO_VALUE, ConfigError, WireError
from fedsllm.words import counted

log = logging.getLogger(__name__)

CLIENT_ADAPTER = Path("adapters") / "client_global.safetensors"
SERVER_ADAPTER = Path("adapters") / "server.safetensors"
RUN_SUMMARY = "summary.json"
"""The launcher's per-round losses (fedsllm.summary.write_summary); optional here."""
TOKENIZER_INFO = "fedsllm_tokenizer.json"
"""Written next to the exported base: how token ids map to text."""
MODEL_CARD = "README.md"
"""The model card; written after peft's save_pretrained, which writes a blank template."""

PROBE_TEXTS = (
    "",
    "name[The Eagle], eatType[coffee shop], food[French] => The Eagle is a coffee shop.",
    "caf\u00e9 \u2603 \U0001f600\n\ttabs  and  spaces ",
)
"""Texts on which the saved tokenizer is checked against training's tokenization."""

E2E_PROMPT = "name[The Eagle], eatType[coffee shop], food[French], area[riverside] => "
"""The model card's example prompt for a run on the built-in E2E-style data."""

_PEFT_FUTURE_WARNING = r"`is_gradient_checkpointing` is deprecated"
"""peft 0.21 reads this deprecated transformers 5 property in PeftModel.__init__."""


def read_run_scenario(run_dir: Path) -> Any:
    """The ScenarioConfig stored in RUN_DIR/scenario.json (ConfigError naming the file)."""
    return _scenario_from_json(run_dir, _read_scenario_json(run_dir))


def _read_scenario_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "scenario.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            str(path), NO_VALUE, "file not found (is this a run directory?)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), NO_VALUE, f"not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, "must hold a JSON object")
    return data


def _scenario_from_json(run_dir: Path, data: dict[str, Any]) -> Any:
    from fedsllm.config import from_dict

    fields = {k: v for k, v in data.items() if k != "scenario_hash"}  # stored beside them
    try:
        return from_dict(fields)
    except ConfigError as err:
        raise ConfigError(
            f"{run_dir / 'scenario.json'}: {err.path}", err.value, err.reason
        ) from None


def read_run_summary(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/summary.json as a dict; None when it is missing (the run did not get that
    far) or unreadable (logged). The losses only go into the model card, so their
    absence does not stop an export."""
    path = run_dir / RUN_SUMMARY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s is not readable JSON (%s); the model card gets no losses", path, err)
        return None
    return data if isinstance(data, dict) else None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), NO_VALUE, "file not found") from None
    except OSError as err:
        raise ConfigError(str(path), NO_VALUE, f"not readable ({err})") from None


def _checked_state(path: Path, peft_part: Any) -> dict[str, Any]:
    from fedsllm.model.lora import adapter_from_bytes

    try:
        return adapter_from_bytes(_read_bytes(path), peft_part, field=path.name)
    except WireError as err:
        raise ConfigError(
            str(path), err.field, f"adapter does not fit the run's model: {err.reason}"
        ) from None


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """No transformers progress bars ("Writing model shards", "Loading weights") and
    no FutureWarning from peft's use of `is_gradient_checkpointing`, for the block only.

    Everything else still warns; both settings are restored on exit.
    """
    from transformers.utils import logging as hf_logging

    def no_bar(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return factory(*args, **{**kwargs, "disable": True})

    previous = hf_logging.set_tqdm_hook(no_bar)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _PEFT_FUTURE_WARNING, FutureWarning)
            yield
    finally:
        hf_logging.set_tqdm_hook(previous)


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


def training_prefix_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids training gave `text` up to its eos: bos + the text's tokens
    (fedsllm.data.dataset.tokenize_texts appends eos and pads after these)."""
    return [tokenizer.bos_id, *tokenizer.encode(text)]


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
    """A transformers fast tokenizer that encodes exactly like training does with `ByteTokenizer`.

    Byte-level BPE with no merges: each UTF-8 byte b becomes id b + 3, and
    the three specials keep ids 0, 1, 2. Its plain call puts bos in front
    (a TemplateProcessing post-processor, saved in tokenizer.json), as
    training does; eos, which training appends to each sample, is left out
    so that a prompt can be continued. `add_special_tokens=False` gives
    the bare bytes. `AutoTokenizer.from_pretrained` on the saved files
    needs nothing from this project.
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
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        add_bos_token=True,
        add_eos_token=False,
    )


def _calls_like_training(hf_tokenizer: Any, tokenizer: Any) -> bool:
    return all(
        list(hf_tokenizer(text).input_ids) == training_prefix_ids(tokenizer, text)
        for text in PROBE_TEXTS
    )


def training_tokenizer_hf(tokenizer: Any) -> Any:
    """A transformers tokenizer whose plain call gives training's ids (bos + text).

    The byte tokenizer gets `byte_tokenizer_hf`. A checkpoint's own tokenizer
    is kept when it already does so; otherwise a copy is told to add the bos
    training used (GPT-2's adds nothing by default, while training put
    <|endoftext|> in front). A tokenizer that cannot be told is returned as
    it is; the caller checks the saved files (`tokenizer_matches`).
    """
    from fedsllm.data.tokenizer import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return byte_tokenizer_hf(tokenizer)
    hf_tokenizer = tokenizer.hf_tokenizer
    if _calls_like_training(hf_tokenizer, tokenizer):
        return hf_tokenizer
    hf_tokenizer = copy.deepcopy(hf_tokenizer)
    if hf_tokenizer.bos_token_id != tokenizer.bos_id:
        hf_tokenizer.bos_token = hf_tokenizer.convert_ids_to_tokens(tokenizer.bos_id)
    try:
        # transformers' tokenizers-backed classes rebuild their post-processor on these setters.
        hf_tokenizer.add_bos_token = True
        hf_tokenizer.add_eos_token = False
    except AttributeError:  # a class whose flags are read-only: saved as it is
        pass
    return hf_tokenizer


def tokenizer_matches(saved_dir: Path, tokenizer: Any) -> bool:
    """Whether `AutoTokenizer.from_pretrained(saved_dir)` gives training's ids on PROBE_TEXTS."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(saved_dir, local_files_only=True)
    return _calls_like_training(loaded, tokenizer)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_file_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of each weight file (*.safetensors, pytorch_model*.bin) in `model_dir`."""
    files = sorted({*model_dir.glob("*.safetensors"), *model_dir.glob("pytorch_model*.bin")})
    return {f.name: sha256_file(f) for f in files}


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write OUT_DIR/adapter_config.json, adapter_model.safetensors, the tokenizer
    files and README.md (and OUT_DIR/base for a preset). Returns OUT_DIR. Missing or
    malformed inputs raise ConfigError naming the file. Prints no progress bars."""
    with quiet_hf():
        return _export_run(Path(run_dir), Path(out_dir))


def _export_run(run_dir: Path, out_dir: Path) -> Path:
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
    from fedsllm.paths import writable_dir

    # Every input checked before OUT_DIR is created, and OUT_DIR before the
    # minutes of model building: a refused export writes nothing.
    if not run_dir.is_dir():
        raise ConfigError("RUN_DIR", str(run_dir), "is not a directory")
    scenario_json = _read_scenario_json(run_dir)
    scenario = _scenario_from_json(run_dir, scenario_json)
    for rel in (CLIENT_ADAPTER, SERVER_ADAPTER):
        if not (run_dir / rel).is_file():
            raise ConfigError(str(run_dir / rel), NO_VALUE, "file not found")
    # Never among files it did not write: not the run directory (whose base/ the
    # fed server serves), not a used directory; an earlier export it rewrites.
    if out_dir.exists() and out_dir.resolve() == run_dir.resolve():
        raise ConfigError("OUT_DIR", str(out_dir), "is the run directory")
    if out_dir.exists() and (
        not out_dir.is_dir()
        or (any(out_dir.iterdir()) and not (out_dir / "adapter_config.json").is_file())
    ):
        raise ConfigError(
            "OUT_DIR", str(out_dir), "exists and holds files that are not an earlier export"
        )
    out_dir = writable_dir(out_dir, "OUT_DIR")
    tokenizer = load_tokenizer(scenario)
    # The base the fed server served its peers (a pretrained preset), when the
    # run directory keeps it: no pretraining, no cache on this host.
    served = sorted((run_dir / "base").glob("*.safetensors"))
    model = build_base_model(scenario, tokenizer.vocab_size, weights=served[0] if served else None)
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
    hf_tokenizer = training_tokenizer_hf(tokenizer)
    hf_tokenizer.save_pretrained(out_dir)
    if scenario.model.path:
        base_ref = scenario.model.path
        base_hashes = weight_file_hashes(Path(base_ref))
    else:
        base_dir = out_dir / "base"
        model.save_pretrained(base_dir)
        hf_tokenizer.save_pretrained(base_dir)
        (base_dir / TOKENIZER_INFO).write_text(
            json.dumps(tokenizer_info(tokenizer), indent=2) + "\n", encoding="utf-8"
        )
        base_ref = str(base_dir.resolve())
        base_hashes = weight_file_hashes(base_dir)
    matches = tokenizer_matches(out_dir, tokenizer)
    if not matches:
        log.warning(
            "the tokenizer saved in %s does not reproduce training's ids (bos + text); "
            "put bos id %d in front yourself",
            out_dir,
            tokenizer.bos_id,
        )

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
    # After save_pretrained, which writes peft's blank template to the same file.
    card = model_card(
        run_dir=run_dir,
        out_dir=out_dir,
        scenario=scenario,
        scenario_hash=scenario_json.get("scenario_hash"),
        summary=read_run_summary(run_dir),
        base_ref=base_ref,
        base_hashes=base_hashes,
        num_blocks=int(model.config.num_hidden_layers),
        family=family,
        tokenizer=tokenizer,
        tokenizer_ok=matches,
    )
    (out_dir / MODEL_CARD).write_text(card, encoding="utf-8")
    log.info(
        "exported %d adapter tensors (%s, split at %d) to %s; base: %s",
        len(full_state),
        family,
        split_layer,
        out_dir,
        base_ref,
    )
    return out_dir


# --------------------------------------------------------------------------- model card

PRESET_NOTES = {
    "tiny-llama": (
        "The base is the built-in `tiny-llama` preset: 4 blocks, hidden size 64, 0.22M "
        "parameters, a byte vocabulary and a short pretraining on generated text. It is "
        "there to exercise the testbed (split training, links, the delay model), not to "
        "write: greedy generations are byte-level babble in the style of the training "
        "sentences and ignore the prompt's attributes. For example, after this version's "
        "default run (the controller planned 37 rounds x 1 local step; validation loss "
        f"1.52) `{E2E_PROMPT}` continues as `The parm], price[boome bluis bridge], "
        "food[hotel], food[hote`, and after 10 rounds x 20 local steps (policy "
        "fixed_steps, validation loss 0.92) as `The The The The The The The Tomile Sur he "
        "city col estaurant`."
    ),
    "tiny-gpt2": (
        "The base is the built-in `tiny-gpt2` preset: 4 blocks, hidden size 64, 0.25M "
        "parameters, a byte vocabulary and a short pretraining on generated text. It is "
        "there to exercise the testbed (split training, links, the delay model), not to "
        "write: greedy generations are byte-level babble and ignore the prompt. For "
        f"example, after this version's default run (validation loss 2.53) `{E2E_PROMPT}` "
        "continues as `and bus bus brithe bris brise britheris buris bris bris bre`."
    ),
    "gpt2-small": (
        "The base is the built-in `gpt2-small` preset: GPT-2's 124M shape with a random "
        "init that is never pretrained (it serves timing studies). Its generations are noise."
    ),
}
"""What a preset's generations look like (measured with the card's own snippet,
transformers 5.24, on the E2E_PROMPT, after `fedsllm run` on the default scenario
with that preset), for the card's "What to expect" note. Re-measure when the
default scenario, the presets or their pretraining change."""

MEANINGFUL_MODEL_HINT = (
    "For a model whose generations mean something, fine-tune a real checkpoint: "
    "download a Llama- or GPT-2-family causal LM to a local directory and run "
    "`fedsllm run --set model.path=/path/to/checkpoint` (`model.path` in the "
    "scenario file; never downloaded by fedsllm), then export that run."
)


def _loss(value: Any) -> str:
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.4f}"


def _loss_section(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return [
            f"The run directory holds no readable `{RUN_SUMMARY}` (the run did not get "
            "as far as writing it), so there are no losses to report.",
        ]
    lines = []
    failed = summary.get("failed")
    if summary.get("ok") is False and isinstance(failed, dict):
        lines += [
            f"**The run did not finish:** {failed.get('process', '?')} failed "
            f"({failed.get('reason', '?')}). The adapters are the last ones it saved.",
            "",
        ]
    lines += [
        "Mean next-token cross-entropy (nats per token) as `fedsllm run` reported it: "
        "train loss averaged over every client's local steps of the round, validation "
        "loss of the global model after the round (`-`: not evaluated that round).",
        "",
        "| after round | train loss | validation loss | clients | local steps |",
        "|---|---|---|---|---|",
        f"| before training | - | {_loss(summary.get('initial_val_loss'))} | - | - |",
    ]
    for rnd in summary.get("rounds") or []:
        lines.append(
            f"| {rnd.get('round', '?')} | {_loss(rnd.get('train_loss'))} | "
            f"{_loss(rnd.get('val_loss'))} | {rnd.get('num_clients', '-')} | "
            f"{rnd.get('num_steps', '-')} |"
        )
    lines += ["", f"Final validation loss: {_loss(summary.get('final_val_loss'))}."]
    return lines


def _yaml_front_matter(base_ref: str) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=base_ref,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=[f"base_model:adapter:{base_ref}", "lora", "peft", "transformers", "fedsllm"],
    )
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(
    *,
    run_dir: Path,
    out_dir: Path,
    scenario: Any,
    scenario_hash: str | None,
    summary: dict[str, Any] | None,
    base_ref: str,
    base_hashes: dict[str, str],
    num_blocks: int,
    family: str,
    tokenizer: Any,
    tokenizer_ok: bool,
) -> str:
    """The exported README.md: YAML front matter (base_model, library_name: peft,
    tags) and what ran, on what base, with what losses, and how to load it."""
    from importlib.metadata import version

    from fedsllm.model.lora import lora_config

    split = scenario.split.split_layer
    adapter = scenario.adapter
    training, data = scenario.training, scenario.data
    targets = sorted(lora_config(adapter, family).target_modules)
    out_abs = out_dir.resolve()
    lines = [
        f"# LoRA adapter from FedsLLM run `{run_dir.resolve().name}`",
        "",
        "One standard PEFT LoRA adapter for the whole model, merged by `fedsllm export` "
        "from a split-federated fine-tuning run: the clients trained the adapters of "
        f"blocks 0-{split - 1} (federated averaging over rounds), the main server those "
        f"of blocks {split}-{num_blocks - 1}.",
        "",
    ]
    if not scenario.model.path:
        lines += [
            "> **What to expect.** "
            + PRESET_NOTES.get(scenario.model.preset, f"Preset `{scenario.model.preset}`.")
            + " "
            + MEANINGFUL_MODEL_HINT,
            "",
        ]
    lines += [
        "## Run",
        "",
        f"- run directory: `{run_dir.resolve()}`",
        f"- scenario: `{scenario.name}`, hash `{scenario_hash or 'not recorded'}`, "
        f"seed {scenario.seed}",
        f"- clients: {scenario.clients.num_clients}; policy `{scenario.policy.name}`"
        + (
            f", {counted(training.num_rounds, 'round')} x "
            f"{counted(training.num_local_steps, 'local step')}"
            if scenario.policy.name == "fixed_steps"
            else " (rounds and local steps planned by the delay model)"
        ),
        f"- batch size {training.batch_size}, learning rate {training.client_lr:g} "
        f"(clients) / {training.server_lr:g} (server), server update "
        f"`{training.server_update}`",
        f"- data: `{data.source}`"
        + (f" (`{data.path}`)" if data.path else "")
        + f", {data.num_train_samples} train / {data.num_val_samples} validation samples, "
        f"sequence length {data.seq_len}, partition `{data.partition}`",
        f"- exported with fedsllm {version('fedsllm')}, PEFT {version('peft')}, "
        f"transformers {version('transformers')}",
        "",
        "## Base model",
        "",
    ]
    if scenario.model.path:
        lines.append(f"- local checkpoint `{base_ref}` ({family} family, {num_blocks} blocks)")
    else:
        pretrain = (
            f"{scenario.model.pretrain_steps} steps of base pretraining on generated text "
            f"(learning rate {scenario.model.pretrain_lr:g})"
            if scenario.model.pretrain_steps > 0 and scenario.model.preset != "gpt2-small"
            else "no pretraining"
        )
        lines.append(
            f"- preset `{scenario.model.preset}` ({family} family, {num_blocks} blocks): "
            f"random init with seed {scenario.seed}, then {pretrain}; saved in `base/`"
        )
    for name, digest in base_hashes.items():
        lines.append(f"- sha256 of `{name}`: `{digest}`")
    lines += [
        "",
        "## Split and LoRA",
        "",
        f"- split layer {split}: client blocks 0-{split - 1} with the embeddings, server "
        f"blocks {split}-{num_blocks - 1} with the final norm and LM head",
        f"- LoRA rank {adapter.rank}, alpha {adapter.alpha:g}, dropout {adapter.dropout:g}, "
        f"target modules {', '.join(f'`{t}`' for t in targets)}",
        "",
        "## Losses",
        "",
        *_loss_section(summary),
        "",
        "## Tokenizer",
        "",
        "Training fed every sample as bos + text + eos "
        f"(bos id {tokenizer.bos_id}, eos id {tokenizer.eos_id}, pad id {tokenizer.pad_id}).",
        "",
    ]
    if tokenizer_ok:
        lines.append(
            "`AutoTokenizer.from_pretrained` on this directory puts the same bos in front "
            "(`tokenizer(text).input_ids` is bos + text); it leaves eos out so that a "
            "prompt can be continued: `tokenizer(text).input_ids + [tokenizer.eos_token_id]` "
            f"is exactly a training sample (before the cut to {scenario.data.seq_len} tokens)."
        )
    else:
        lines.append(
            "**The tokenizer saved here does not put training's bos in front:** prepend "
            f"id {tokenizer.bos_id} to `tokenizer(text, add_special_tokens=False).input_ids`."
        )
    if type(tokenizer).__name__ == "ByteTokenizer":
        lines.append("")
        lines.append(
            f"The vocabulary is UTF-8 bytes: token id = byte value + 3 (`base/{TOKENIZER_INFO}`)."
        )
    prompt = E2E_PROMPT if data.source == "e2e" else "Your prompt, in the style of the data"
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"adapter_dir = {str(out_abs)!r}",
        "tokenizer = AutoTokenizer.from_pretrained(adapter_dir)",
        f"base = AutoModelForCausalLM.from_pretrained({base_ref!r})",
        "model = PeftModel.from_pretrained(base, adapter_dir).eval()",
        "",
        f'inputs = tokenizer({prompt!r}, return_tensors="pt")',
        "with torch.no_grad():",
        "    out = model.generate(",
        f"        **inputs, max_new_tokens=60, do_sample=False, pad_token_id={tokenizer.pad_id}",
        "    )",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "`model.merge_and_unload()` folds the adapter into the base weights.",
        "",
    ]
    return _yaml_front_matter(base_ref) + "\n" + "\n".join(lines)
