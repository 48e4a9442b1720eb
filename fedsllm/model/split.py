"""Cut a causal LM at block L into a client part and a server part.

The cut is data, not an edit of the model class: two
explicit wrappers reuse the model's own modules and replay what the model's
forward does around them.

- `ClientPart`: token embeddings (+ GPT-2's learned position embeddings) and
  blocks [0, L). Returns the smashed activations (B, T, D).
- `ServerPart`: blocks [L, n), the final norm and the LM head. Returns logits
  and the standard shifted causal-LM loss.

Both sides derive position ids from the 2-D attention mask (cumsum - 1,
clamped at 0) so right and left padding behave the same, and each rebuilds
its causal + padding mask with `transformers.masking_utils.create_causal_mask`
for the configured attention kernel (sdpa or eager). Only the 2-D mask
crosses the wire. Llama's rotary embeddings come from the model's own
`rotary_emb`, so rope scaling variants follow the checkpoint.

The wrappers share the frozen base modules with the model they came from
(no copy), except the server's LM head, which is always an independent
frozen copy: GPT-2 ties it to the token embedding, and LoRA on one side must
never alias the other. Once split, the source model should not be used on
its own (LoRA injected into a part also lands in the shared blocks).

Shape letters: B batch, T sequence, D hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedsllm.errors import ConfigError
from fedsllm.model.build import model_family

FAMILY_PREFIXES: dict[str, dict[str, str]] = {
    "llama": {
        "embed_tokens": "model.embed_tokens",
        "layers": "model.layers",
        "norm": "model.norm",
        "lm_head": "lm_head",
    },
    "gpt2": {
        "embed_tokens": "transformer.wte",
        "wpe": "transformer.wpe",
        "layers": "transformer.h",
        "norm": "transformer.ln_f",
        "lm_head": "lm_head",
    },
}
"""Attribute names inside the part wrappers -> module paths in the full model.
Read-only; used to translate adapter keys (see `part_key_to_full`)."""


def positions_from_mask(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the i-th real token gets position i.

    Works for right and left padding alike; padding slots take a clamped
    position so embedding lookups stay in range (their outputs are masked).
    """
    return (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)


def _blocks(model: Any, family: str) -> nn.ModuleList:
    return model.model.layers if family == "llama" else model.transformer.h


def _causal_mask(
    config: Any,
    hidden_BTD: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    position_ids_BT: torch.Tensor,
) -> Any:
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(
        config=config,
        inputs_embeds=hidden_BTD,
        attention_mask=attention_mask_BT,
        cache=None,
        position_ids=position_ids_BT,
    )


def _run_blocks(
    family: str,
    blocks: nn.ModuleList,
    rotary_emb: nn.Module | None,
    config: Any,
    hidden_BTD: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    position_ids_BT: torch.Tensor,
) -> torch.Tensor:
    """Replay the body of LlamaModel/GPT2Model.forward over a slice of blocks."""
    mask = _causal_mask(config, hidden_BTD, attention_mask_BT, position_ids_BT)
    if family == "llama":
        position_embeddings = rotary_emb(hidden_BTD, position_ids=position_ids_BT)
        for block in blocks:
            hidden_BTD = block(
                hidden_BTD,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids_BT,
                cache=None,
                use_cache=False,
            )
    else:
        for block in blocks:
            hidden_BTD = block(
                hidden_BTD, None, mask, use_cache=False, position_ids=position_ids_BT
            )
    return hidden_BTD


class ClientPart(nn.Module):
    """Embeddings and blocks [0, L) of a causal LM; outputs smashed activations."""

    def __init__(self, model: Any, split_layer: int) -> None:
        super().__init__()
        self.family = model_family(model)
        self.config = model.config
        self.split_layer = split_layer
        blocks = _blocks(model, self.family)
        self.num_layers = split_layer
        if self.family == "llama":
            self.embed_tokens = model.model.embed_tokens
            self.rotary_emb = model.model.rotary_emb
        else:
            self.embed_tokens = model.transformer.wte
            self.wpe = model.transformer.wpe
            self.drop = model.transformer.drop
            self.rotary_emb = None
        self.layers = nn.ModuleList(blocks[:split_layer])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and 0/1 mask -> hidden states (B, T, D) after block L-1."""
        hidden_BTD = self.embed_tokens(input_ids)
        position_ids_BT = positions_from_mask(attention_mask)
        if self.family == "gpt2":
            hidden_BTD = self.drop(hidden_BTD + self.wpe(position_ids_BT))
        return _run_blocks(
            self.family,
            self.layers,
            self.rotary_emb,
            self.config,
            hidden_BTD,
            attention_mask,
            position_ids_BT,
        )


class ServerPart(nn.Module):
    """Blocks [L, n), final norm and an independent copy of the LM head."""

    def __init__(self, model: Any, split_layer: int) -> None:
        super().__init__()
        self.family = model_family(model)
        self.config = model.config
        self.split_layer = split_layer
        blocks = _blocks(model, self.family)
        self.num_layers = len(blocks) - split_layer
        self.layer_offset = split_layer
        """Add to a local block index to get the full model's index."""
        self.layers = nn.ModuleList(blocks[split_layer:])
        if self.family == "llama":
            self.norm = model.model.norm
            self.rotary_emb = model.model.rotary_emb
        else:
            self.norm = model.transformer.ln_f
            self.rotary_emb = None
        head = model.lm_head
        # skip_init: the weights are overwritten below, and a random init would
        # consume the caller's global RNG stream.
        own_head = torch.nn.utils.skip_init(
            nn.Linear,
            head.in_features,
            head.out_features,
            bias=head.bias is not None,
            device=head.weight.device,
            dtype=head.weight.dtype,
        )
        with torch.no_grad():
            own_head.weight.copy_(head.weight)
            if head.bias is not None:
                own_head.bias.copy_(head.bias)
        own_head.requires_grad_(head.weight.requires_grad)
        self.lm_head = own_head

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Smashed activations (B, T, D) -> (logits (B, T, V), loss or None).

        The loss is transformers' own ForCausalLMLoss (labels shifted inside,
        -100 ignored, mean over counted tokens), so it matches the unsplit model.
        """
        from transformers.loss.loss_utils import ForCausalLMLoss

        hidden_BTD = _run_blocks(
            self.family,
            self.layers,
            self.rotary_emb,
            self.config,
            hidden,
            attention_mask,
            positions_from_mask(attention_mask),
        )
        logits_BTV = self.lm_head(self.norm(hidden_BTD))
        loss = None
        if labels is not None:
            loss = ForCausalLMLoss(logits_BTV, labels, vocab_size=logits_BTV.shape[-1])
        return logits_BTV, loss


def num_blocks(model: Any) -> int:
    """How many transformer blocks the model has (the upper end of the split range)."""
    return len(_blocks(model, model_family(model)))


def split_model(model: Any, split_layer: int) -> tuple[ClientPart, ServerPart]:
    """Cut `model` before block `split_layer`; both parts reuse its frozen modules.

    Raises ConfigError (split.split_layer) unless 1 <= split_layer <= n - 1,
    since either side must hold at least one block.
    """
    n = num_blocks(model)
    if not isinstance(split_layer, int) or not 1 <= split_layer <= n - 1:
        raise ConfigError(
            "split.split_layer", split_layer, f"must be in [1, {n - 1}] for a model with {n} blocks"
        )
    return ClientPart(model, split_layer), ServerPart(model, split_layer)


def part_key_to_full(key: str, family: str, layer_offset: int) -> str:
    """Translate a parameter or adapter key of a part into the full model's name.

    `key` may carry peft's ``base_model.model.`` prefix, which is kept. Block
    indices are shifted by `layer_offset` (0 for the client, L for the server).
    """
    peft_prefix = "base_model.model."
    lead = peft_prefix if key.startswith(peft_prefix) else ""
    rest = key[len(lead) :]
    head, _, tail = rest.partition(".")
    prefixes = FAMILY_PREFIXES[family]
    if head not in prefixes:
        raise ValueError(f"key {key!r} names no module of a split part")
    if head == "layers":
        index, _, tail = tail.partition(".")
        return f"{lead}{prefixes['layers']}.{int(index) + layer_offset}.{tail}"
    return f"{lead}{prefixes[head]}.{tail}"
