"""AnyRes on the model side: per-view visual tokens -> each image's token sequence.

An image's views are [overview, tile 0, tile 1, ...] (lmm.data.anyres). With a connector whose
tokens form a square grid (linear, MLP, pixel shuffle, C-Abstractor, LDP), the tiles' grids are
joined into one map, optionally average-pooled per tile, cut to the image (the black bars
removed) and read row by row, a learned newline embedding after each row; the overview's
tokens come first, without newlines. This is LLaVA-NeXT's `spatial_unpad` layout and
transformers' LlavaNextModel.pack_image_features. With a connector whose tokens are not a grid
(Q-Former, resamplers), the tiles' tokens follow one another row of tiles by row of tiles,
a newline after each row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmm.data.anyres import AnyRes, unpadded_shape


def tile_map(tiles: torch.Tensor, rows: int, cols: int, side: int, pool: int) -> torch.Tensor:
    """[rows·cols, side², D] tile tokens -> one map [D, rows·s, cols·s] (s = ⌈side/pool⌉),
    tiles in place, each pooled by `pool` first."""
    dim = tiles.shape[-1]
    grids = tiles.transpose(1, 2).reshape(rows * cols, dim, side, side)  # [R·C, D, g, g]
    if pool > 1:
        grids = F.avg_pool2d(grids, pool, ceil_mode=True)  # [R·C, D, s, s]
    s = grids.shape[-1]
    return grids.view(rows, cols, dim, s, s).permute(2, 0, 3, 1, 4).reshape(dim, rows * s, cols * s)


def unpad(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[D, H, W] -> the centred [D, h, w] part that shows the image (transformers' unpad_image)."""
    full_height, full_width = features.shape[1:]
    shown_height, shown_width = unpadded_shape(height, width, full_height, full_width)
    top, left = (full_height - shown_height) // 2, (full_width - shown_width) // 2
    return features[:, top : top + shown_height, left : left + shown_width]


def image_tokens(
    views: torch.Tensor, height: int, width: int, layout: AnyRes, side: int | None, newline: torch.Tensor | None
) -> torch.Tensor:
    """One image's views' tokens [V, N, D] -> its token sequence [T, D], T = layout.num_tokens(...)."""
    overview, tiles = (views[:1].flatten(0, 1), views[1:]) if layout.overview else (views[:0].flatten(0, 1), views)
    rows, cols = layout.grid(height, width)
    dim = views.shape[-1]
    if side is None:  # not a grid: tiles in order, a newline after each row of tiles
        per_row = tiles.reshape(rows, cols * tiles.shape[1], dim)  # [R, C·N, D]
        if newline is not None:
            per_row = torch.cat([per_row, newline.to(per_row.dtype).expand(rows, 1, dim)], dim=1)
        return torch.cat([overview, per_row.reshape(-1, dim)])
    features = unpad(tile_map(tiles, rows, cols, side, layout.pool), height, width)  # [D, h, w]
    if newline is not None:
        features = torch.cat(
            [features, newline.to(features.dtype)[:, None, None].expand(dim, features.shape[1], 1)], dim=2
        )
    return torch.cat([overview, features.flatten(1, 2).transpose(0, 1)])  # [N + h·(w + 1), D]


def arrange(
    visual: torch.Tensor,
    image_sizes: list[tuple[int, int]],
    layout: AnyRes,
    side: int | None,
    newline: torch.Tensor | None,
) -> torch.Tensor:
    """The batch's views' tokens [V, N, D] -> all images' token sequences one after another [ΣT, D]."""
    out, start = [], 0
    for height, width in image_sizes:
        count = layout.num_views(height, width)
        out.append(image_tokens(visual[start : start + count], height, width, layout, side, newline))
        start += count
    if start != visual.shape[0]:
        raise ValueError(f"{visual.shape[0]} AnyRes views for images whose sizes make {start}")
    return torch.cat(out)


class AnyResTokens(nn.Module):
    """`arrange` as a module, holding the learned newline embedding (LLaVA-NeXT's `image_newline`).

    It lives in the connector (the newline trains, saves and loads with it) and is called once
    per forward on every rank, with or without images (the dummy image of text-only steps goes
    through it too): under FSDP it is its own unit, and the newline is used inside its call,
    while gathered, as FSDP requires; the same call count on every rank keeps the collectives equal."""

    def __init__(self, layout: AnyRes, dim: int, side: int | None):
        super().__init__()
        self.layout, self.side = layout, side
        self.newline = (
            nn.Parameter(torch.randn(dim) / math.sqrt(dim)) if layout.newline else None
        )  # HF's init: std 1/sqrt(D)

    def forward(self, visual: torch.Tensor, image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        return arrange(visual, image_sizes, self.layout, self.side, self.newline)  # [V, N, D] -> [ΣT, D]
