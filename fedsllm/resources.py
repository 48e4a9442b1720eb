"""Will a run fit in this machine's memory? An estimate made before anything starts.

Every role is its own OS process that builds the whole base model before
keeping its part. The servers import torch, transformers, peft and grpc each;
the clients of a loopback run are forked from one client host that imported
them once (client/host.py), so a client adds only its own heap: memory still
grows linearly with the number of clients, at about a fifth of the old slope.
Starting more clients than fit drives the machine into the OOM killer, which
takes the user's other work with it; `fedsllm run` and `fedsllm compare`
therefore refuse such a run up front, naming the estimate and the flag that overrides the check.

The per-process figures are measured (see PROCESS_OVERHEAD_BYTES) and the
model term is counted from the scenario's real model config, so the estimate
follows bigger models. It is deliberately an estimate, not a guarantee.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError

GIB = 1024**3

PROCESS_OVERHEAD_BYTES = {
    "client": 100e6,
    "client_host": 450e6,
    "client_process": 500e6,
    "main_server": 700e6,
    "fed_server": 600e6,
}
"""Memory (PSS) of one role process with a tiny preset, beyond the model weights:
interpreter, imported libraries, data shard, gRPC buffers. A client is a fork
of the client host, so its figure is the marginal PSS of one more client (its
heap, its shard, its channels and threads, its share of the host's pages),
measured with benchmarks/scale.py on the 2-core development machine: 86 MB at
K = 32 and 84 MB at K = 100 (was 360 MB PSS per separately started client;
48 of those used 23.6 GB). The host holds the imported libraries once.
"client_process" is a client started on its own (network namespaces, where
each client needs its own `ip netns exec`): about 490 MB RSS, 360 MB PSS."""

MODEL_COPIES = {
    "client": 2.0,
    "client_host": 2.0,
    "client_process": 2.0,
    "main_server": 4.0,
    "fed_server": 2.0,
}
"""Base-weight copies each role holds at its peak: the whole base is built
before the split keeps one part, and the main server also holds the server
LoRA's optimizer state and the activations of every stream."""

FLOAT32_BYTES = 4
SKIP_FLAG = "--skip-memory-check"

ACTIVATION_FLOATS_PER_BLOCK = 22.0
"""fp32 values of hidden size a transformer block keeps per token for its backward
(sdpa attention). Measured on tiny-llama (d = 64, 4 blocks, batch 8): the peak
RSS of one forward and backward grows by 52 MB at seq_len 256, 215 MB at 1024
and 796 MB at 4096, linear in tokens, 22 d-sized values per block and token
once the logits' share is taken out."""
EAGER_SCORE_COPIES = 1.45
"""Eager attention also keeps each block's heads x T x T score matrices (about
1.45 copies, fp32): 0.76 GB more at seq_len 1024 and 12.3 GB more at 4096 in
the same measurement. sdpa does not materialize them."""
LOGIT_COPIES = 3.0
"""The LM head's logits, their log-softmax and its gradient (batch x T x V)."""
REFERENCE_SEQ_LEN = 256
REFERENCE_BATCH = 8
"""The data.seq_len and training.batch_size (sdpa) at which PROCESS_OVERHEAD_BYTES
were measured: their activations are already inside those figures, so only a
scenario's activations beyond them are added."""


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """What a run of K clients is expected to need, in bytes."""

    num_clients: int
    per_client_bytes: float
    servers_bytes: float
    activation_note: str = ""
    """What the activations add beyond the measured default, when they do."""

    @property
    def total_bytes(self) -> float:
        return self.servers_bytes + self.num_clients * self.per_client_bytes

    def describe(self) -> str:
        return (
            f"about {self.total_bytes / GIB:.1f} GiB ({self.num_clients} clients x "
            f"{self.per_client_bytes / 1e6:.0f} MB + servers {self.servers_bytes / 1e6:.0f} MB"
            f"{'; ' + self.activation_note if self.activation_note else ''})"
        )


@dataclass(frozen=True, slots=True)
class ActivationShape:
    """The model numbers that size a training step's activations."""

    hidden_size: int
    num_heads: int
    vocab_size: int
    eager: bool


def activation_bytes(
    shape: ActivationShape, blocks: int, batch: int, seq_len: int, head: bool
) -> float:
    """Bytes one forward keeps for its backward over `blocks` transformer blocks of a
    `batch` of `seq_len` tokens, plus the LM head's logits when `head` (the main
    server's part). See ACTIVATION_FLOATS_PER_BLOCK for the measurement."""
    tokens = batch * seq_len
    per_block = ACTIVATION_FLOATS_PER_BLOCK * shape.hidden_size * tokens
    if shape.eager:
        per_block += EAGER_SCORE_COPIES * batch * shape.num_heads * seq_len * seq_len
    logits = LOGIT_COPIES * tokens * shape.vocab_size if head else 0.0
    return FLOAT32_BYTES * (blocks * per_block + logits)


def estimate_memory(num_clients: int, base_params: int, forked: bool = True) -> MemoryEstimate:
    """The estimate for `num_clients` clients over a base of `base_params` parameters,
    the clients forked from a client host (`forked`) or each started on its own."""
    weights = base_params * FLOAT32_BYTES

    def role(name: str) -> float:
        return PROCESS_OVERHEAD_BYTES[name] + MODEL_COPIES[name] * weights

    return MemoryEstimate(
        num_clients=num_clients,
        per_client_bytes=role("client" if forked else "client_process"),
        servers_bytes=(
            role("main_server") + role("fed_server") + (role("client_host") if forked else 0.0)
        ),
    )


def scenario_memory(scenario: Any) -> MemoryEstimate:
    """`estimate_memory` for a scenario, its base counted from the real model config,
    plus the activations of its batches beyond those of the measured default: a
    long data.seq_len or a large training.batch_size grows every client and the
    main server (which computes each client's batch in turn, a whole wave of
    them fused under training.server_update = "wave")."""
    from fedsllm.model.counts import count_scenario, model_config_for

    counts = count_scenario(scenario)
    base_params = counts.client_params + counts.server_params
    # Clients in network namespaces are started one by one (fedsllm.launch).
    forked = scenario.run.network != "netns"
    estimate = estimate_memory(scenario.clients.num_clients, base_params, forked)
    config = model_config_for(scenario)
    shape = ActivationShape(
        hidden_size=config.hidden_size,  # gpt2's n_embd and n_head too (attribute_map)
        num_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        eager=scenario.model.attn_implementation == "eager",
    )
    reference = dataclasses.replace(shape, eager=False)
    batch, seq_len = scenario.training.batch_size, scenario.data.seq_len
    server_batch = batch * (
        scenario.training.max_wave_batches if scenario.training.server_update == "wave" else 1
    )

    def extra(blocks: int, batch_: int, head: bool) -> float:
        now = activation_bytes(shape, blocks, batch_, seq_len, head)
        then = activation_bytes(reference, blocks, REFERENCE_BATCH, REFERENCE_SEQ_LEN, head)
        return max(0.0, now - then)

    client = extra(counts.split_layer, batch, head=False)
    server = extra(counts.num_layers - counts.split_layer, server_batch, head=True)
    if client == 0.0 and server == 0.0:
        return estimate
    note = (
        f"activations of batch {batch} x seq_len {seq_len} add {client / 1e6:.0f} MB per "
        f"client and {server / 1e6:.0f} MB to the main server"
    )
    return dataclasses.replace(
        estimate,
        per_client_bytes=estimate.per_client_bytes + client,
        servers_bytes=estimate.servers_bytes + server,
        activation_note=note,
    )


def available_memory_bytes(meminfo: str | Path = "/proc/meminfo") -> float | None:
    """MemAvailable (what the kernel can hand out without swapping), or None if unknown."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024
    return None


def check_memory(estimate: MemoryEstimate, available_bytes: float | None) -> None:
    """Refuse (ConfigError on --clients) a run whose estimate exceeds available memory."""
    if available_bytes is None or estimate.total_bytes <= available_bytes:
        return
    raise ConfigError(
        "--clients",
        estimate.num_clients,
        f"the run needs {estimate.describe()} but only {available_bytes / GIB:.1f} GiB "
        f"is available; use fewer clients{_smaller_batches(estimate)}, or pass {SKIP_FLAG} "
        "to start it anyway",
    )


def _smaller_batches(estimate: MemoryEstimate) -> str:
    if not estimate.activation_note:
        return ""
    return ", a shorter data.seq_len or a smaller training.batch_size"
