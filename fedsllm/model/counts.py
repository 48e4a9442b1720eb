"""FLOPs, smashed-data bytes and adapter bytes of a split LoRA model: the one source of them.

The delay model (docs/MODEL.md section 3: phi_c, phi_s, s, omega) and the running
code (device-compute emulation, link pacing) both read these numbers from
`count_model`, so the plan and the run describe the same thing. Everything is
counted from the transformers config alone (no weights are built), which keeps
planning fast even for gpt2-small; the tests hold the counts against real
built models and real peft adapters.

Formulas (T = seq_len, d = hidden size, V = vocabulary, per sample):

- matmul params of a block: every Linear/Conv1D weight (Llama: q,k,v,o and
  gate, up, down; GPT-2: c_attn, attn c_proj, c_fc, mlp c_proj). Biases,
  norms and embedding lookups cost no matmul FLOPs and are left out.
- forward FLOPs per token of a block = 2 x (matmul params + LoRA params of
  the block) + causal attention scores and values: token t attends to t
  keys, 2*t*d_attn FLOPs for Q.K and 2*t*d_attn for A.V, so a sample costs
  sum_t 4*t*d_attn = 2*T*(T+1)*d_attn per block (d_attn = heads x head_dim).
- LM head (server only): 2*d*V per token.
- backward with a frozen base = the input-gradient pass (~1x the forward
  FLOPs: one matmul per forward matmul, the attention terms included) plus
  the LoRA weight gradients, 2 x LoRA params per token. The server's head
  gets an input-gradient pass too (it has to feed its blocks).
- smashed bytes per sample (uplink) = T*d*bytes(wire dtype) + labels and
  attention mask, T*8 bytes each (int64). The gradient sent back is T*d*bytes.
- adapter bytes = LoRA params x 4 (fp32 tensors), LoRA params of one adapted
  matrix (in x out) = r*(in + out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedsllm.config import WIRE_DTYPES
from fedsllm.errors import ConfigError
from fedsllm.wire.tensors import DTYPE_ITEMSIZE

WIRE_DTYPE_BYTES = {name: DTYPE_ITEMSIZE[name] for name in WIRE_DTYPES}
"""Bytes per activation value on the wire, by SplitConfig.wire_dtype."""

INT64_BYTES = 8
ADAPTER_VALUE_BYTES = 4
"""LoRA tensors travel as fp32."""

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}
"""Modules adapted when adapter.target_modules is empty (the LoRA paper's choice);
fedsllm.model.lora applies LoRA to exactly these, so counts and model agree."""


@dataclass(frozen=True, slots=True)
class ModelCounts:
    """Per-sample costs of one split, batch-independent except the `*_per_batch` helpers.

    FLOPs are forward+backward unless the name says otherwise; bytes are
    payload bytes (no framing).
    """

    family: str
    d_model: int
    seq_len: int
    split_layer: int
    num_layers: int
    wire_dtype: str
    client_params: int
    """Base parameters held by the client (embeddings + blocks [0, L))."""
    server_params: int
    """Base parameters held by the main server (blocks [L, n), final norm, own head copy)."""
    client_lora_params: int
    server_lora_params: int
    client_fwd_flops: float
    """Client forward FLOPs per sample."""
    client_bwd_flops: float
    server_fwd_flops: float
    server_bwd_flops: float
    smashed_bytes: int
    """Uplink bytes per sample: activations + labels + attention mask."""
    gradient_bytes: int
    """Downlink bytes per sample: gradient of the loss w.r.t. the activations."""

    @property
    def phi_c(self) -> float:
        """Client forward+backward FLOPs per sample (docs/MODEL.md section 3)."""
        return self.client_fwd_flops + self.client_bwd_flops

    @property
    def phi_s(self) -> float:
        """Server forward+backward FLOPs per sample (docs/MODEL.md section 3)."""
        return self.server_fwd_flops + self.server_bwd_flops

    @property
    def client_adapter_bytes(self) -> int:
        """omega / 8: the client-side LoRA state uploaded once a round."""
        return self.client_lora_params * ADAPTER_VALUE_BYTES

    @property
    def server_adapter_bytes(self) -> int:
        return self.server_lora_params * ADAPTER_VALUE_BYTES

    def smashed_bytes_per_batch(self, batch_size: int) -> int:
        return self.smashed_bytes * batch_size

    def gradient_bytes_per_batch(self, batch_size: int) -> int:
        return self.gradient_bytes * batch_size


@dataclass(frozen=True, slots=True)
class _Shape:
    """The few config numbers the formulas need, family-independent."""

    family: str
    d_model: int
    num_layers: int
    vocab_size: int
    d_attn: int
    block_matrices: dict[str, list[tuple[int, int]]]
    """Module name suffix -> (in, out) of every matrix it matches in one block."""
    block_other_params: int
    """Biases and norm weights of one block."""
    embedding_params: int
    final_norm_params: int


def _shape(model_config: Any) -> _Shape:
    family = getattr(model_config, "model_type", "")
    if family == "llama":
        d = model_config.hidden_size
        heads = model_config.num_attention_heads
        kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
        head_dim = getattr(model_config, "head_dim", None) or d // heads
        inter = model_config.intermediate_size
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        mats = {
            "q_proj": [(d, q_out)],
            "k_proj": [(d, kv_out)],
            "v_proj": [(d, kv_out)],
            "o_proj": [(q_out, d)],
            "gate_proj": [(d, inter)],
            "up_proj": [(d, inter)],
            "down_proj": [(inter, d)],
        }
        other = 2 * d
        if getattr(model_config, "attention_bias", False):
            other += q_out + 2 * kv_out + d
        if getattr(model_config, "mlp_bias", False):
            other += 2 * inter + d
        return _Shape(
            family,
            d,
            model_config.num_hidden_layers,
            model_config.vocab_size,
            q_out,
            mats,
            other,
            model_config.vocab_size * d,
            d,
        )
    if family == "gpt2":
        d = model_config.n_embd
        inter = getattr(model_config, "n_inner", None) or 4 * d
        mats = {
            "c_attn": [(d, 3 * d)],
            "c_proj": [(d, d), (inter, d)],  # peft's "c_proj" matches attention and MLP
            "c_fc": [(d, inter)],
        }
        other = 4 * d + 3 * d + d + inter + d  # ln_1, ln_2 (w+b), biases of the four matrices
        embed = (model_config.vocab_size + model_config.n_positions) * d
        return _Shape(
            family, d, model_config.n_layer, model_config.vocab_size, d, mats, other, embed, 2 * d
        )
    raise ConfigError("model", family, "counts know the llama and gpt2 families only")


def count_model(
    model_config: Any, split_layer: int, adapter: Any, seq_len: int, wire_dtype: str = "float32"
) -> ModelCounts:
    """Count the costs of splitting `model_config` at `split_layer` with LoRA `adapter`.

    `model_config` is a transformers config (llama or gpt2 family); `adapter`
    an AdapterConfig (rank, target_modules). Formulas: see the module docstring.
    """
    shape = _shape(model_config)
    if not 1 <= split_layer < shape.num_layers:
        raise ConfigError(
            "split.split_layer",
            split_layer,
            f"must be in [1, {shape.num_layers - 1}] for this model",
        )
    if wire_dtype not in WIRE_DTYPE_BYTES:
        raise ConfigError(
            "split.wire_dtype", wire_dtype, f"must be one of {', '.join(WIRE_DTYPE_BYTES)}"
        )
    if seq_len < 1:
        raise ConfigError("data.seq_len", seq_len, "must be >= 1")
    targets = tuple(adapter.target_modules) or DEFAULT_TARGETS[shape.family]
    for name in targets:
        if name not in shape.block_matrices:
            raise ConfigError(
                "adapter.target_modules",
                name,
                f"not a {shape.family} block matrix (known: {', '.join(shape.block_matrices)})",
            )
    rank = adapter.rank
    block_matmul = sum(i * o for mats in shape.block_matrices.values() for i, o in mats)
    block_lora = sum(rank * (i + o) for name in set(targets) for i, o in shape.block_matrices[name])
    block_params = block_matmul + shape.block_other_params
    d, t, v = shape.d_model, seq_len, shape.vocab_size
    attn_per_sample = 2.0 * t * (t + 1) * shape.d_attn
    block_fwd = t * 2.0 * (block_matmul + block_lora) + attn_per_sample
    block_bwd = block_fwd + t * 2.0 * block_lora
    head_fwd = t * 2.0 * d * v
    n_client = split_layer
    n_server = shape.num_layers - split_layer
    wire_bytes = WIRE_DTYPE_BYTES[wire_dtype]
    return ModelCounts(
        family=shape.family,
        d_model=d,
        seq_len=seq_len,
        split_layer=split_layer,
        num_layers=shape.num_layers,
        wire_dtype=wire_dtype,
        client_params=shape.embedding_params + n_client * block_params,
        server_params=n_server * block_params + shape.final_norm_params + v * d,
        client_lora_params=n_client * block_lora,
        server_lora_params=n_server * block_lora,
        client_fwd_flops=n_client * block_fwd,
        client_bwd_flops=n_client * block_bwd,
        server_fwd_flops=n_server * block_fwd + head_fwd,
        server_bwd_flops=n_server * block_bwd + head_fwd,
        smashed_bytes=t * d * wire_bytes + 2 * t * INT64_BYTES,
        gradient_bytes=t * d * wire_bytes,
    )


def model_config_for(scenario: Any) -> Any:
    """The transformers config a scenario's model is built from (preset or local path)."""
    if scenario.model.path:
        from transformers import AutoConfig

        from fedsllm.model.checkpoint import checkpoint_dir

        path = checkpoint_dir(scenario)
        try:
            return AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(
                "model.path", scenario.model.path, f"not a causal LM checkpoint ({reason})"
            ) from None
    from fedsllm.model.presets import scenario_preset_config

    return scenario_preset_config(scenario)


def count_scenario(scenario: Any) -> ModelCounts:
    """`count_model` for the model, split, adapter, seq_len and wire dtype of a scenario."""
    return count_model(
        model_config_for(scenario),
        scenario.split.split_layer,
        scenario.adapter,
        scenario.data.seq_len,
        scenario.split.wire_dtype,
    )
