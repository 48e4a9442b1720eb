"""Base pretraining: it lowers loss on held-out generic text, and is cached once per key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsllm.data.tokenizer import ByteTokenizer
from fedsllm.model.build import build_base_model, build_preset_model
from fedsllm.model.pretrain import (
    cache_dir,
    corpus_blocks,
    mean_loss,
    pack_texts,
    pretrain_base,
    pretrain_key,
)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_pretraining_lowers_loss_and_hits_cache_second_time(tiny_scenario, preset):
    scenario = tiny_scenario(preset, pretrain_steps=40, seq_len=32)
    held_out = corpus_blocks(16, 32, seed=999)
    random_base = build_preset_model(scenario, 259)
    random_loss = mean_loss(random_base, held_out)

    trained = build_preset_model(scenario, 259)
    first = pretrain_base(trained, scenario, 259)
    assert not first.cache_hit and first.cache_path.is_file()
    assert first.last_loss < first.first_loss
    trained_loss = mean_loss(trained, held_out)
    assert trained_loss < random_loss - 1.0

    again = build_preset_model(scenario, 259)
    second = pretrain_base(again, scenario, 259)
    assert second.cache_hit and second.cache_path == first.cache_path
    a, b = trained.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    built = build_base_model(scenario, 259)  # the public path goes through the same cache
    assert all(not p.requires_grad for p in built.parameters())
    assert all(torch.equal(a[k], built.state_dict()[k]) for k in a)
    assert len(list(cache_dir().glob("*.safetensors"))) == 1


def test_cache_key_changes_with_each_input(tiny_scenario):
    cfg = build_preset_model(tiny_scenario(), 259).config
    base = pretrain_key(cfg, 259, 0, 10, 1e-3, 32)
    assert pretrain_key(cfg, 259, 0, 10, 1e-3, 32) == base
    variants = [
        pretrain_key(cfg, 260, 0, 10, 1e-3, 32),
        pretrain_key(cfg, 259, 1, 10, 1e-3, 32),
        pretrain_key(cfg, 259, 0, 11, 1e-3, 32),
        pretrain_key(cfg, 259, 0, 10, 2e-3, 32),
        pretrain_key(cfg, 259, 0, 10, 1e-3, 64),
        pretrain_key(
            build_preset_model(tiny_scenario("tiny-gpt2"), 259).config, 259, 0, 10, 1e-3, 32
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_corrupt_cache_file_is_retrained(tiny_scenario):
    scenario = tiny_scenario(pretrain_steps=3)
    first = pretrain_base(build_preset_model(scenario, 259), scenario, 259)
    first.cache_path.write_bytes(b"truncated")
    second = pretrain_base(build_preset_model(scenario, 259), scenario, 259)
    assert not second.cache_hit
    assert pretrain_base(build_preset_model(scenario, 259), scenario, 259).cache_hit


def test_pack_texts_adds_bos_eos_and_cuts_full_blocks():
    tok = ByteTokenizer()
    blocks = pack_texts(["ab", "cde"], tok, 3)
    # bos a b eos bos c d e eos -> 9 ids -> 3 blocks
    assert blocks.tolist() == [[1, 100, 101], [2, 1, 102], [103, 104, 2]]


_WORKER = """
import logging, sys, torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from fedsllm.config import DataConfig, ModelConfig, ScenarioConfig
from fedsllm.model.build import build_base_model
s = ScenarioConfig(model=ModelConfig(preset="tiny-llama", pretrain_steps=20),
                   data=DataConfig(seq_len=16))
m = build_base_model(s, 259)
print("SUM", repr(sum(float(p.double().sum()) for p in m.parameters())))
"""


@pytest.mark.slow
def test_concurrent_processes_train_once_and_agree(tmp_path):
    env = {**os.environ, "FEDSLLM_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[3]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:  # on a timeout too: stop every worker, by its own pid
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(p.returncode == 0 for p in procs), outputs
    sums = {line for out in outputs for line in out.splitlines() if line.startswith("SUM")}
    assert len(sums) == 1
    assert sum(out.count("pretraining tiny-llama base") for out in outputs) == 1
    assert sum(out.count("loaded from cache") for out in outputs) == 2
    assert not list(tmp_path.glob("*.tmp*"))


def test_prepare_base_reports_every_step_once_then_hits_the_cache(tiny_scenario):
    """The launcher pretrains before the roles start, with progress; a second run
    finds the cache and reports no steps."""
    from fedsllm.model.build import prepare_base

    scenario = tiny_scenario("tiny-llama", pretrain_steps=3, seq_len=16)
    steps: list[tuple[int, int]] = []
    first = prepare_base(scenario, lambda done, total, loss: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert first is not None and not first.cache_hit
    steps.clear()
    second = prepare_base(scenario, lambda done, total, loss: steps.append((done, total)))
    assert second is not None and second.cache_hit and steps == []
    assert prepare_base(tiny_scenario("tiny-llama", pretrain_steps=0)) is None


def test_run_says_it_pretrains_once_and_where_the_cache_is(tiny_scenario):
    """What `fedsllm run` prints before the roles start (it was 40 s of 'starting')."""
    import io

    from rich.console import Console

    from fedsllm.progress import prepare_base

    scenario = tiny_scenario("tiny-llama", pretrain_steps=2, seq_len=16)
    out = io.StringIO()
    prepare_base(scenario, Console(file=out, width=200), enabled=True)
    text = out.getvalue()
    assert "pretraining the tiny-llama base once (2 steps)" in text
    assert str(cache_dir()) in text and "later runs load it" in text
    assert "base model pretrained in" in text
    out = io.StringIO()
    prepare_base(scenario, Console(file=out, width=200), enabled=True)
    assert "loaded from the cache" in out.getvalue()
    assert "pretraining" not in out.getvalue()
