"""Q-Former connectors: BLIP-2's (queries only) and InstructBLIP's (queries + instruction)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerConfig, InstructBlipQFormerModel

from lmm.core.weights import resolve_weights
from lmm.model.connectors.base import Connector


def _qformer_parameters(q: int, h: int, i: int, layers: int, freq: int, dv: int, d: int, text_ffn: bool) -> int:
    self_attention = 4 * h * h + 6 * h
    cross_attention = 2 * h * h + 2 * dv * h + 6 * h
    ffn = 2 * h * i + i + 3 * h
    per_layer = self_attention + ffn * (2 if text_ffn else 1)
    crossing = sum(1 for layer in range(layers) if layer % freq == 0)
    return q * h + 2 * dv + 2 * h + layers * per_layer + crossing * cross_attention + h * d + d


def _bert_state(path: str) -> dict[str, torch.Tensor]:
    """bert-base-uncased's weights from a local directory, keys without the `bert.` prefix."""
    root = resolve_weights(path, "BERT weights for the Q-Former")
    files = [root / "model.safetensors", root / "pytorch_model.bin"] if root.is_dir() else [Path(root)]
    for file in files:
        if file.exists() and file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
            break
        if file.exists():
            state = torch.load(file, map_location="cpu", weights_only=True)
            break
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {root}")
    return {k.removeprefix("bert."): v for k, v in state.items()}


def _qformer_keys(bert_key: str) -> list[str]:
    """Where a BERT tensor goes in a Q-Former: self-attention as is, the FFN into the query FFN
    (and the text FFN of InstructBLIP's), the embedding LayerNorm into the top LayerNorm."""
    if bert_key.startswith("embeddings.LayerNorm."):
        leaf = bert_key.rsplit(".", 1)[1]
        return [f"layernorm.{leaf}", f"embeddings.layernorm.{leaf}"]
    key = bert_key.replace(".attention.self.", ".attention.attention.")
    if ".intermediate." in key:
        return [key.replace(".intermediate.", ".intermediate_query."), key]
    ffn_output = re.sub(r"(layer\.\d+)\.output\.", r"\1.output_query.", key)
    return [ffn_output, key] if ffn_output != key else [key]


class QFormerConnector(Connector):
    """BLIP-2's Q-Former (transformers' `Blip2QFormerModel`): Q learned queries self-attend and
    cross-attend (every `cross_attention_frequency`-th layer, from layer 0) to the LayerNorm-ed
    patch features; a Linear maps them to the LLM width.

    Tokens: Q (independent of P). Parameters, with H width, I FFN width, L layers, C = number
    of cross-attention layers: Q·H + 2Dv + 2H + L(4H² + 6H + 2HI + I + 3H) + C(2H² + 2Dv·H + 6H) + H·D + D.
    `init_from_bert` (a local bert-base-uncased) initialises self-attention and FFN weights as
    BLIP-2 does; cross-attention stays random.
    """

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        num_queries: int = 32,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        cross_attention_frequency: int = 2,
        init_from_bert: str | None = None,
    ):
        super().__init__()
        self.dims, self.num_queries, self.init_from_bert = (vision_dim, llm_dim), num_queries, init_from_bert
        self.config = self._config(
            vision_dim, hidden_size, num_layers, num_heads, intermediate_size, cross_attention_frequency
        )
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden_size) * self.config.initializer_range)
        self.vision_norm = nn.LayerNorm(vision_dim)  # BLIP-2's ln_vision on the tower's output
        self.qformer = self._model()
        self.proj = nn.Linear(hidden_size, llm_dim)

    def _config(self, dv, h, layers, heads, i, freq):
        return Blip2QFormerConfig(
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=i,
            cross_attention_frequency=freq,
            encoder_hidden_size=dv,
        )

    def _model(self) -> nn.Module:
        return Blip2QFormerModel(self.config)

    def num_tokens(self, num_patches: int) -> int:
        return self.num_queries

    @classmethod
    def budget_arguments(cls, tokens: int) -> dict:
        return {"num_queries": tokens}

    def formula_parameters(self) -> int:
        c = self.config
        return _qformer_parameters(
            self.num_queries,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.cross_attention_frequency,
            *self.dims,
            text_ffn=False,
        )

    def load_pretrained(self) -> None:
        """Copy BERT's self-attention, FFN and embedding LayerNorm into the Q-Former (BLIP-2's init)."""
        if not self.init_from_bert:
            return
        own = self.qformer.state_dict()
        loaded = {}
        for key, value in _bert_state(self.init_from_bert).items():
            for target in _qformer_keys(key):
                if target in own and own[target].shape == value.shape:
                    loaded[target] = value
        if not any(".attention.attention." in k for k in loaded):
            raise ValueError(
                f"{self.init_from_bert} does not look like a BERT checkpoint matching this Q-Former's width/depth"
            )
        self.qformer.load_state_dict(loaded, strict=False)
        print(f"[lmm] Q-Former: {len(loaded)} tensors initialised from {self.init_from_bert}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.vision_norm(x)  # [B, P, Dv]
        queries = self.queries.expand(x.shape[0], -1, -1)  # [B, Q, H]
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        return self.proj(out)  # [B, Q, D]


class InstructQFormerConnector(QFormerConnector):
    """InstructBLIP's instruction-aware Q-Former (transformers' `InstructBlipQFormerModel`): the
    instruction's tokens enter beside the Q queries, so self-attention conditions the queries
    on the question before they cross-attend to the patches; only the query outputs are kept.

    Tokens: Q. Parameters: the Q-Former's, plus word embeddings V·H, position embeddings 512·H,
    an embedding LayerNorm 2H (replacing the top LayerNorm) and a text FFN per layer
    (2HI + I + 3H). The instruction uses the LLM's tokenizer, so V is the LLM's vocabulary.
    """

    uses_instruction = True

    def __init__(self, vision_dim: int, llm_dim: int, vocab_size: int, max_instruction_length: int = 512, **kwargs):
        self.vocab_size, self.max_instruction_length = vocab_size, max_instruction_length
        super().__init__(vision_dim, llm_dim, **kwargs)

    def _config(self, dv, h, layers, heads, i, freq):
        return InstructBlipQFormerConfig(
            vocab_size=self.vocab_size,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=i,
            cross_attention_frequency=freq,
            encoder_hidden_size=dv,
            max_position_embeddings=self.max_instruction_length,
            pad_token_id=0,
        )

    def _model(self) -> nn.Module:
        return InstructBlipQFormerModel(self.config)

    def formula_parameters(self) -> int:
        c = self.config
        base = _qformer_parameters(
            self.num_queries,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.cross_attention_frequency,
            *self.dims,
            text_ffn=True,
        )
        return base + self.vocab_size * c.hidden_size + self.max_instruction_length * c.hidden_size

    def forward(self, x: torch.Tensor, instruction_ids: torch.Tensor, instruction_mask: torch.Tensor) -> torch.Tensor:
        features = self.vision_norm(x)  # [B, P, Dv]
        queries = self.queries.expand(x.shape[0], -1, -1)  # [B, Q, H]
        query_mask = torch.ones(queries.shape[:2], dtype=instruction_mask.dtype, device=x.device)
        out = self.qformer(
            input_ids=instruction_ids,  # [B, L]
            attention_mask=torch.cat([query_mask, instruction_mask], dim=1),  # [B, Q + L]
            query_embeds=queries,
            encoder_hidden_states=features,
        ).last_hidden_state
        return self.proj(out[:, : self.num_queries])  # [B, Q, D]
