"""AnyRes (LLaVA-NeXT): an image as a downscaled overview plus a grid of tower-size tiles.

The grid is the pinpoint (a (height, width) resolution, each a multiple of the tile size)
that keeps the most of the image's pixels and wastes the least (`best_resolution`); the image
is resized into it keeping its aspect ratio, centred on black, and cut into tiles row by
row. The overview is the whole image squashed to one tile. These are the rules of LLaVA-NeXT
and of transformers' LlavaNextImageProcessor, written from their description and HF's code,
so an exported model reads lmm's tiles as its own.

How many visual tokens an image becomes depends only on its size (`AnyRes.num_tokens`), so
placeholders, length planning and packing count them before any pixel is decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

LLAVA_NEXT_PINPOINTS = (
    (1, 2),
    (2, 1),
    (2, 2),
    (3, 1),
    (1, 3),
)  # (rows, cols) of 336 px tiles: [[336, 672], [672, 336], ...]


def default_pinpoints(tile: int) -> list[list[int]]:
    """LLaVA-NeXT's grid_pinpoints ([[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    at 336 px) scaled to the tower's tile size."""
    return [[rows * tile, cols * tile] for rows, cols in LLAVA_NEXT_PINPOINTS]


def best_resolution(height: int, width: int, pinpoints: list[list[int]] | tuple) -> tuple[int, int]:
    """The pinpoint (height, width) that shows the most of the image once it is scaled to fit,
    ties broken by the least padding (transformers' select_best_resolution)."""
    best, most_shown, least_wasted = None, 0, math.inf
    for target_height, target_width in pinpoints:
        scale = min(target_width / width, target_height / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        wasted = target_width * target_height - shown
        if shown > most_shown or (shown == most_shown and wasted < least_wasted):
            best, most_shown, least_wasted = (int(target_height), int(target_width)), shown, wasted
    return best


def unpadded_shape(height: int, width: int, grid_height: int, grid_width: int) -> tuple[int, int]:
    """The part of a [grid_height, grid_width] feature map that shows the image (not its black
    bars): transformers' unpad_image, the same padding rule as the tiling's centring."""
    if width / height > grid_width / grid_height:  # wider than the grid: bars above and below
        shown = int(round(height * (grid_width / width), 7))
        return grid_height - 2 * ((grid_height - shown) // 2), grid_width
    shown = int(round(width * (grid_height / height), 7))
    return grid_height, grid_width - 2 * ((grid_width - shown) // 2)


def fit_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """The image's size once scaled into the target keeping its aspect ratio (HF's get_patch_output_size)."""
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


@dataclass(frozen=True)
class AnyRes:
    """The tiling and the token layout of `vision.image_aspect=anyres`.

    tile: the tower's image size; pinpoints: (height, width) grids in pixels, multiples of
    `tile` (anyres.grid_pinpoints, kept to at most anyres.max_tiles tiles); overview: put the
    squashed whole image first (anyres.overview); newline: a learned embedding after
    each row of tile tokens (anyres.image_newline); pool: average-pool each tile's token grid
    by this stride (anyres.tile_pool, 1 = off).
    """

    tile: int
    pinpoints: tuple[tuple[int, int], ...]
    overview: bool = True
    newline: bool = True
    pool: int = 1

    @classmethod
    def from_config(cls, anyres_cfg, tile: int) -> "AnyRes":
        pinpoints = anyres_cfg.get("grid_pinpoints") or default_pinpoints(tile)
        max_tiles = anyres_cfg.get("max_tiles")
        for pinpoint in pinpoints:
            if len(pinpoint) != 2 or any(int(side) <= 0 or int(side) % tile for side in pinpoint):
                raise ValueError(
                    f"anyres.grid_pinpoints: {list(pinpoint)} is not a (height, width) pair of multiples of the "
                    f"tower's {tile} px tile"
                )
        kept = [
            tuple(int(side) for side in p)
            for p in pinpoints
            if not max_tiles or (p[0] // tile) * (p[1] // tile) <= max_tiles
        ]
        if not kept:
            raise ValueError(
                f"anyres.max_tiles={max_tiles} leaves none of anyres.grid_pinpoints={[list(p) for p in pinpoints]}"
            )
        pool = int(anyres_cfg.get("tile_pool") or 1)
        if pool < 1:
            raise ValueError(f"anyres.tile_pool must be >= 1 (1 = no pooling), got {pool}")
        return cls(
            tile,
            tuple(kept),
            bool(anyres_cfg.get("overview", True)),
            bool(anyres_cfg.get("image_newline", True)),
            pool,
        )

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of this size."""
        target_height, target_width = best_resolution(height, width, self.pinpoints)
        return target_height // self.tile, target_width // self.tile

    def num_views(self, height: int, width: int) -> int:
        """Tower inputs for one image: its tiles, plus the overview."""
        rows, cols = self.grid(height, width)
        return rows * cols + self.overview

    def pooled_side(self, side: int) -> int:
        return math.ceil(side / self.pool)

    def tile_token_shape(self, height: int, width: int, side: int) -> tuple[int, int]:
        """The tiles' tokens as one map, its bars removed: (rows, cols) of tokens, from a tile's
        token grid side (before pooling)."""
        rows, cols = self.grid(height, width)
        side = self.pooled_side(side)
        return unpadded_shape(height, width, rows * side, cols * side)

    def num_tokens(self, height: int, width: int, tokens_per_view: int, side: int | None) -> int:
        """Visual tokens of one image. `side`: the side of the connector's square token grid per
        view (None for connectors whose tokens are not a grid, e.g. the Q-Former: then tiles are
        not unpadded nor pooled, and the newline ends each row of tiles)."""
        rows, cols = self.grid(height, width)
        overview = tokens_per_view if self.overview else 0
        if side is None:
            return overview + rows * cols * tokens_per_view + (rows if self.newline else 0)
        token_rows, token_cols = self.tile_token_shape(height, width, side)
        return overview + token_rows * (token_cols + self.newline)

    def views(self, image: Image.Image, resize) -> torch.Tensor:
        """RGB image -> [overview?, tiles row by row] as [V, 3, tile, tile] floats in [0, 1].
        `resize(image, (h, w))` is the transform's resampler."""
        width, height = image.size
        target_height, target_width = best_resolution(height, width, self.pinpoints)
        fitted_height, fitted_width = fit_size(height, width, target_height, target_width)
        canvas = torch.zeros((3, target_height, target_width))  # black, as LLaVA-NeXT pads
        top, left = (target_height - fitted_height) // 2, (target_width - fitted_width) // 2
        canvas[:, top : top + fitted_height, left : left + fitted_width] = resize(image, (fitted_height, fitted_width))
        t = self.tile
        tiles = canvas.view(3, target_height // t, t, target_width // t, t).permute(1, 3, 0, 2, 4).reshape(-1, 3, t, t)
        if not self.overview:
            return tiles  # [rows·cols, 3, t, t]
        return torch.cat([resize(image, (t, t))[None], tiles])  # [1 + rows·cols, 3, t, t]
