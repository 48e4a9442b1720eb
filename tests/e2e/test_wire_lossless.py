"""Wire losslessness: one client, one round, several local steps through the real
processes and gRPC give the same losses and adapters as training the unsplit
LoRA model in one process with the same seeds and batches."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.e2e.conftest import fedsllm, overrides, read_json

pytestmark = pytest.mark.slow

NUM_STEPS = 5


def _reference(scenario) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train the whole model with LoRA in this process, starting from the parts' init."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from fedsllm.data.federated import build_federated_data
    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import build_base_model, model_family
    from fedsllm.model.lora import adapter_state, lora_config
    from fedsllm.model.split import part_key_to_full, positions_from_mask
    from fedsllm.roles import build_part

    torch.set_num_threads(1)
    split = scenario.split.split_layer
    client_part, _, _ = build_part(scenario, "client")
    server_part, _, _ = build_part(scenario, "server")
    tokenizer = load_tokenizer(scenario)
    full = build_base_model(scenario, tokenizer.vocab_size)
    family = model_family(full)
    full = get_peft_model(full, lora_config(scenario.adapter, family))
    init = {part_key_to_full(k, family, 0): v for k, v in adapter_state(client_part).items()}
    init |= {part_key_to_full(k, family, split): v for k, v in adapter_state(server_part).items()}
    assert set(init) == set(get_peft_model_state_dict(full))
    set_peft_model_state_dict(full, init)

    def is_client(name: str) -> bool:
        return int(name.split("layers.")[1].split(".")[0]) < split

    named = [(n, p) for n, p in full.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if is_client(n)], "lr": scenario.training.client_lr},
            {
                "params": [p for n, p in named if not is_client(n)],
                "lr": scenario.training.server_lr,
            },
        ]
    )
    data = build_federated_data(scenario, tokenizer)
    batches = data.train[0].batches(scenario.training.batch_size, seed=scenario.seed * 1000)
    losses = []
    full.train()
    for batch in itertools.islice(batches, NUM_STEPS):
        out = full(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=positions_from_mask(batch.attention_mask),
            labels=batch.labels,
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss))
    state = get_peft_model_state_dict(full)
    client = {k: v for k, v in state.items() if is_client(k)}
    server = {k: v for k, v in state.items() if not is_client(k)}
    return losses, client, server


def test_split_run_over_grpc_equals_unsplit_training(tmp_path, cache_dir) -> None:
    from safetensors.torch import load_file

    from fedsllm.config import from_dict
    from fedsllm.model.split import part_key_to_full
    from fedsllm.trace import read_records

    out = tmp_path / "run"
    proc = fedsllm(
        "run",
        "--clients",
        "1",
        "--rounds",
        "1",
        "--local-steps",
        str(NUM_STEPS),
        "--quiet",
        "--out",
        str(out),
        *overrides("training.client_lr=5e-3", "training.server_lr=1e-2"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = read_json(out / "scenario.json")
    doc.pop("scenario_hash")
    scenario = from_dict(doc)

    ref_losses, ref_client, ref_server = _reference(scenario)

    events = [
        r for r in read_records(out / "trace") if r["kind"] == "event" and r["name"] == "train_loss"
    ]
    wire_losses = [e["extra"]["loss"] for e in sorted(events, key=lambda e: e["step"])]
    assert len(wire_losses) == NUM_STEPS
    assert wire_losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    assert wire_losses[-1] != pytest.approx(wire_losses[0], abs=1e-4)  # it did train

    split = scenario.split.split_layer
    client = {
        part_key_to_full(k, "llama", 0): v
        for k, v in load_file(out / "adapters" / "client_global_round0.safetensors").items()
    }
    server = {
        part_key_to_full(k, "llama", split): v
        for k, v in load_file(out / "adapters" / "server.safetensors").items()
    }
    assert set(client) == set(ref_client) and set(server) == set(ref_server)
    for key, value in (client | server).items():
        ref = (ref_client | ref_server)[key]
        assert value.abs().sum() > 0, key
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6, msg=key)
