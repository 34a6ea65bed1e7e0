"""Idefics3 / SmolVLM's pixel-shuffle connector: space-to-depth, then one Linear."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmm.model.connectors.base import Connector, square_grid


class PixelShuffleConnector(Connector):
    """Each r×r block of neighbouring patches is folded into one token of width Dv·r²
    (space-to-depth), then a Linear without bias maps it to the LLM width.

    A grid whose side g is not a multiple of r (SigLIP-384's 27×27 at r=2) is zero-padded on
    the bottom/right to the next multiple first. Tokens: ⌈g/r⌉². Parameters: Dv·r²·D.
    """

    spatial = True

    def __init__(self, vision_dim: int, llm_dim: int, ratio: int = 2):
        super().__init__()
        self.dims, self.ratio = (vision_dim, llm_dim), ratio
        self.proj = nn.Linear(vision_dim * ratio * ratio, llm_dim, bias=False)

    def num_tokens(self, num_patches: int) -> int:
        return math.ceil(square_grid(num_patches, "pixel shuffle") / self.ratio) ** 2

    def formula_parameters(self) -> int:
        dv, d = self.dims
        return dv * self.ratio**2 * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, c = x.shape
        r, side = self.ratio, square_grid(p, "pixel shuffle")
        cells = math.ceil(side / r)
        grid = F.pad(
            x.view(b, side, side, c), (0, 0, 0, cells * r - side, 0, cells * r - side)
        )  # [B, cells·r, cells·r, C]
        grid = grid.view(b, cells, r, cells, r, c)  # [B, gy, ry, gx, rx, C]
        x = grid.permute(0, 1, 3, 2, 4, 5).reshape(b, cells * cells, r * r * c)  # [B, ⌈g/r⌉², C·r²]
        return self.proj(x)  # [B, ⌈g/r⌉², D]
