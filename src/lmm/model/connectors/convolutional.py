"""Convolutional connectors that keep locality while reducing tokens: C-Abstractor and LDPv2."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import LayerNorm2d
from timm.models.regnet import Bottleneck, RegStage
from torch import nn

from lmm.model.connectors.base import Connector, budget_side, to_grid


def _bottleneck_parameters(c_in: int, c_out: int, se_ratio: float) -> int:
    """timm RegNet Bottleneck with bottle_ratio 1, depthwise 3x3, SE, LayerNorm2d (Honeybee's block)."""
    se = int(round(c_in * se_ratio))
    params = c_in * c_out + 2 * c_out  # 1x1 conv + norm
    params += 9 * c_out + 2 * c_out  # depthwise 3x3 + norm
    params += c_out * se + se + se * c_out + c_out  # squeeze-excite
    params += c_out * c_out + 2 * c_out  # 1x1 conv + norm
    if c_in != c_out:
        params += c_in * c_out + 2 * c_out  # 1x1 downsample + norm
    return params


class CAbstractorConnector(Connector):
    """Honeybee's C-Abstractor: `depth` ResNet-style (RegNet bottleneck + SE) blocks on the
    patch grid, adaptive average pooling to an s×s grid (M = s² tokens), `depth` more blocks,
    then an MLP readout (Linear, SiLU, Linear). (Honeybee's learned position embedding on the
    input is omitted: the convolutions already see positions.)

    Tokens: M (144 by default). Parameters, with width H and block(i→o) as in
    `_bottleneck_parameters`: block(Dv→H) + (2·depth − 1)·block(H→H) + H·D + D + D² + D.
    """

    spatial = True

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        num_tokens: int = 144,
        hidden_size: int = 1024,
        depth: int = 3,
        se_ratio: float = 0.25,
    ):
        super().__init__()
        self.dims, self.hidden_size, self.depth, self.se_ratio = (vision_dim, llm_dim), hidden_size, depth, se_ratio
        self.side = int(round(num_tokens**0.5))
        if self.side * self.side != num_tokens:
            raise ValueError(f"C-Abstractor num_tokens must be a square, got {num_tokens}")
        block = partial(
            RegStage,
            stride=1,
            dilation=1,
            act_layer=nn.SiLU,
            norm_layer=LayerNorm2d,
            block_fn=partial(Bottleneck, se_ratio=se_ratio),
        )
        self.net = nn.Sequential(
            block(depth, vision_dim, hidden_size),
            nn.AdaptiveAvgPool2d(self.side),
            block(depth, hidden_size, hidden_size),
        )
        self.readout = nn.Sequential(nn.Linear(hidden_size, llm_dim), nn.SiLU(), nn.Linear(llm_dim, llm_dim))

    def num_tokens(self, num_patches: int) -> int:
        return self.side * self.side

    @classmethod
    def budget_arguments(cls, tokens: int) -> dict:
        budget_side(tokens)
        return {"num_tokens": tokens}  # its own adaptive pooling, between the two block stages

    def formula_parameters(self) -> int:
        (dv, d), h = self.dims, self.hidden_size
        blocks = _bottleneck_parameters(dv, h, self.se_ratio) + (2 * self.depth - 1) * _bottleneck_parameters(
            h, h, self.se_ratio
        )
        return blocks + h * d + d + d * d + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.net(to_grid(x, "C-Abstractor"))  # [B, H, s, s]
        return self.readout(grid.flatten(2).transpose(1, 2))  # [B, s², D]


class LDPConnector(Connector):
    """MobileVLM-v2's LDPv2: an MLP (Linear, GELU, Linear) per patch, adaptive average pooling
    to s×s (12×12), then a depthwise 3×3 convolution as a position encoding, added residually.

    Tokens: s² (144). Parameters: Dv·D + D + D² + D + 9D + D = Dv·D + D² + 12D.
    """

    spatial = True

    def __init__(self, vision_dim: int, llm_dim: int, pooled_side: int = 12):
        super().__init__()
        self.dims, self.side = (vision_dim, llm_dim), pooled_side
        self.mlp = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.pool = nn.AdaptiveAvgPool2d(pooled_side)
        self.peg = nn.Conv2d(llm_dim, llm_dim, 3, padding=1, groups=llm_dim)

    def num_tokens(self, num_patches: int) -> int:
        return self.side * self.side

    @classmethod
    def budget_arguments(cls, tokens: int) -> dict:
        return {"pooled_side": budget_side(tokens)}  # its own average pooling, before the position block

    def formula_parameters(self) -> int:
        dv, d = self.dims
        return dv * d + d * d + 12 * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.pool(to_grid(self.mlp(x), "LDP"))  # [B, D, s, s]
        grid = grid + self.peg(grid)
        return grid.flatten(2).transpose(1, 2)  # [B, s², D]
