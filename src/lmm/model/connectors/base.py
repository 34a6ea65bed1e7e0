"""The connector contract, and the per-patch connectors: identity, linear, MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class Connector(nn.Module):
    """[Contract] `forward(x [B, P, Dv])` returns `[B, num_tokens(P), llm_dim]`.

    Connectors whose tokens keep the patches' layout as a square grid set `spatial = True`.
    Connectors that read the instruction (InstructBLIP) set `uses_instruction = True` and
    take `instruction_ids [B, L]` and `instruction_mask [B, L]` as keyword arguments.
    """

    uses_instruction = False
    spatial = False  # its tokens are a row-major square grid over the image (AnyRes unpads and pools them)

    def num_tokens(self, num_patches: int) -> int:
        return num_patches

    @classmethod
    def budget_arguments(cls, tokens: int) -> dict | None:
        """How `connector.tokens=N` (the visual-token budget) is reached: the constructor arguments
        with which this connector emits N tokens itself (a sequence connector's query count), or
        None: its tokens are a grid, which the model average-pools to √N × √N (lmm.model.lmm)."""
        return None

    def formula_parameters(self) -> int:
        """The parameter count from the docstring's formula (tests compare it with the module)."""
        raise NotImplementedError

    def load_pretrained(self) -> None:
        """Load weights the config names (e.g. the Q-Former's BERT); most connectors start random."""


def square_grid(num_patches: int, who: str) -> int:
    """Side of the square patch grid; spatial connectors need one (no CLS token)."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{who} needs a square patch grid, got {num_patches} tokens (use select_feature=patch)")
    return side


def budget_side(tokens: int) -> int:
    """Side of the square grid a token budget asks for (budgets of grid connectors are squares)."""
    side = math.isqrt(tokens) if tokens > 0 else 0
    if side * side != tokens or side == 0:
        raise ValueError(f"connector.tokens={tokens} must be a positive square (a side × side grid), e.g. 16, 64, 144")
    return side


def pool_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """[B, g², D] -> [B, side², D]: adaptive average pooling of the token grid (MM1's and
    LLaVA-OneVision's reduction; cells of ⌈g/side⌉ or ⌊g/side⌋ tokens when side does not divide g)."""
    grid = F.adaptive_avg_pool2d(to_grid(tokens, "token budget"), side)  # [B, D, side, side]
    return grid.flatten(2).transpose(1, 2)


def to_grid(x: torch.Tensor, who: str) -> torch.Tensor:
    """[B, P, C] -> [B, C, g, g]."""
    side = square_grid(x.shape[1], who)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


class IdentityConnector(Connector):
    """Visual features pass unchanged: needs vision_dim == llm_dim. Tokens: P. Parameters: 0."""

    spatial = True

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        if vision_dim != llm_dim:
            raise ValueError(f"identity connector needs vision_dim == llm_dim, got {vision_dim} and {llm_dim}")

    def formula_parameters(self) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x  # [B, P, D]


class LinearConnector(Connector):
    """LLaVA-1's projector: one Linear per patch. Tokens: P. Parameters: Dv·D + D."""

    spatial = True

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.dims = (vision_dim, llm_dim)
        self.proj = nn.Linear(vision_dim, llm_dim)

    def formula_parameters(self) -> int:
        dv, d = self.dims
        return dv * d + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # [B, P, D]


class MLPConnector(Connector):
    """LLaVA-1.5's `mlp{depth}x_{act}`: Linear(Dv, D), then (act, Linear(D, D)) × (depth − 1).

    depth=2, gelu is mlp2x_gelu. Tokens: P. Parameters: Dv·D + D + (depth − 1)(D² + D).
    """

    spatial = True

    def __init__(self, vision_dim: int, llm_dim: int, depth: int = 2, activation: str = "gelu"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLP connector depth must be >= 1, got {depth}")
        self.dims, self.depth, self.activation = (vision_dim, llm_dim), depth, activation
        layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
        for _ in range(depth - 1):
            layers += [ACT2FN[activation], nn.Linear(llm_dim, llm_dim)]
        self.mlp = nn.Sequential(*layers)

    def formula_parameters(self) -> int:
        dv, d = self.dims
        return dv * d + d + (self.depth - 1) * (d * d + d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)  # [B, P, D]
