"""Connectors: patch features [B, P, Dv] -> visual tokens in the LLM's width [B, N, D].

Adding a connector is one class here and one yaml in conf/connector/. Every connector takes
`vision_dim` and `llm_dim` (filled in by the model builder) and reports `num_tokens(P)`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.activations import ACT2FN


class Connector(nn.Module):
    """[Contract] `forward(x [B, P, Dv])` returns `[B, num_tokens(P), llm_dim]`."""

    def num_tokens(self, num_patches: int) -> int:
        return num_patches


class LinearConnector(Connector):
    """LLaVA-1's projector: one Linear per patch."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.proj = nn.Linear(vision_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # [B, P, D]


class MLPConnector(Connector):
    """LLaVA-1.5's `mlp{depth}x_{act}`: Linear, then (act, Linear) × (depth − 1). depth=2 is mlp2x_gelu."""

    def __init__(self, vision_dim: int, llm_dim: int, depth: int = 2, activation: str = "gelu"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLP connector depth must be >= 1, got {depth}")
        layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
        for _ in range(depth - 1):
            layers += [ACT2FN[activation], nn.Linear(llm_dim, llm_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)  # [B, P, D]


class QFormerConnector(Connector):
    """BLIP-2's Q-Former: learned queries cross-attend to the patches, then a Linear to the LLM width."""

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
    ):
        super().__init__()
        config = Blip2QFormerConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            cross_attention_frequency=cross_attention_frequency,
            encoder_hidden_size=vision_dim,
        )
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden_size) * config.initializer_range)
        self.vision_norm = nn.LayerNorm(vision_dim)  # BLIP-2 normalises the tower's output
        self.qformer = Blip2QFormerModel(config)
        self.proj = nn.Linear(hidden_size, llm_dim)

    def num_tokens(self, num_patches: int) -> int:
        return self.num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.vision_norm(x)  # [B, P, Dv]
        queries = self.queries.expand(x.shape[0], -1, -1)  # [B, Q, H]
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        return self.proj(out)  # [B, Q, D]
