"""Query-based resamplers: Qwen-VL's one-layer cross-attention and Flamingo's Perceiver."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmm.model.connectors.base import Connector, budget_side, square_grid


def sincos_2d(dim: int, side: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (MAE / Qwen-VL) for a side×side grid: [side², dim]."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):  # first half encodes rows, second half columns
        angles = coord[:, None] * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


class ResamplerConnector(Connector):
    """Qwen-VL's position-aware adapter: Q learned queries (a square grid) cross-attend, in one
    multi-head attention layer of width D, to the patch features projected to D; 2-D sin-cos
    position embeddings are added to the queries (their grid) and to the keys (the patch grid).

    Tokens: Q (256 by default). Parameters: Q·D + Dv·D (kv_proj, no bias) + 4D² + 4D (attention)
    + 6D (three LayerNorms) + D² (output projection) = Q·D + Dv·D + 5D² + 10D.
    """

    def __init__(self, vision_dim: int, llm_dim: int, num_queries: int = 256, head_dim: int = 128):
        super().__init__()
        self.dims, self.num_queries = (vision_dim, llm_dim), num_queries
        self.query_side = square_grid(num_queries, "resampler queries")
        self.queries = nn.Parameter(torch.randn(num_queries, llm_dim) * 0.02)
        self.kv_proj = nn.Linear(vision_dim, llm_dim, bias=False)
        self.attention = nn.MultiheadAttention(llm_dim, max(1, llm_dim // head_dim), batch_first=True)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(llm_dim), nn.LayerNorm(llm_dim), nn.LayerNorm(llm_dim)
        self.proj = nn.Parameter(torch.randn(llm_dim, llm_dim) * llm_dim**-0.5)

    def num_tokens(self, num_patches: int) -> int:
        return self.num_queries

    @classmethod
    def budget_arguments(cls, tokens: int) -> dict:
        budget_side(tokens)  # a square: the queries' 2-D positions form a grid
        return {"num_queries": tokens}

    def formula_parameters(self) -> int:
        dv, d = self.dims
        return self.num_queries * d + dv * d + 5 * d * d + 10 * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dims[1]
        key_pos = sincos_2d(d, square_grid(x.shape[1], "resampler")).to(x.device, x.dtype)  # [P, D]
        query_pos = sincos_2d(d, self.query_side).to(x.device, x.dtype)  # [Q, D]
        kv = self.ln_kv(self.kv_proj(x))  # [B, P, D]
        queries = (self.ln_q(self.queries) + query_pos).expand(x.shape[0], -1, -1)  # [B, Q, D]
        out, _ = self.attention(queries, kv + key_pos, kv, need_weights=False)  # [B, Q, D]
        return self.ln_post(out) @ self.proj  # [B, Q, D]


class PerceiverLayer(nn.Module):
    """Latents attend to [features ⊕ latents], then a GELU FFN; both residual (Flamingo)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b = media.shape[0]
        x, lat = self.norm_media(media), self.norm_latents(latents)  # [B, P, Dv], [B, M, Dv]
        q = self.to_q(lat)  # [B, M, inner]
        k, v = self.to_kv(torch.cat([x, lat], dim=1)).chunk(2, dim=-1)  # [B, P + M, inner] each
        split = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731  [B, h, n, hd]
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v))  # [B, h, M, hd]
        latents = latents + self.to_out(attended.transpose(1, 2).reshape(b, lat.shape[1], -1))
        return latents + self.ff(latents)  # [B, M, Dv]


class PerceiverResamplerConnector(Connector):
    """Flamingo's Perceiver Resampler: M learned latents (width Dv) pass through L layers in
    which they attend to the patch features concatenated with themselves, then a final
    LayerNorm and a Linear to the LLM width.

    Tokens: M (64 by default). Parameters, with inner = heads·head_dim and FFN multiplier m:
    M·Dv + L(6Dv + 3Dv·inner + inner·Dv + 2m·Dv²) + 2Dv + Dv·D + D.
    """

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        num_latents: int = 64,
        num_layers: int = 6,
        num_heads: int = 8,
        head_dim: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.dims, self.num_latents = (vision_dim, llm_dim), num_latents
        self.shape = (num_layers, num_heads * head_dim, ff_mult)
        self.latents = nn.Parameter(torch.randn(num_latents, vision_dim) * 0.02)
        self.layers = nn.ModuleList(PerceiverLayer(vision_dim, num_heads, head_dim, ff_mult) for _ in range(num_layers))
        self.norm = nn.LayerNorm(vision_dim)
        self.proj = nn.Linear(vision_dim, llm_dim)

    def num_tokens(self, num_patches: int) -> int:
        return self.num_latents

    @classmethod
    def budget_arguments(cls, tokens: int) -> dict:
        return {"num_latents": tokens}

    def formula_parameters(self) -> int:
        (dv, d), (layers, inner, m) = self.dims, self.shape
        return self.num_latents * dv + layers * (6 * dv + 4 * dv * inner + 2 * m * dv * dv) + 2 * dv + dv * d + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(x.shape[0], -1, -1)  # [B, M, Dv]
        for layer in self.layers:
            latents = layer(x, latents)
        return self.proj(self.norm(latents))  # [B, M, D]
