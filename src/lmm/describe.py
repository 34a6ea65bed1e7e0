"""task=describe: per-component parameter counts and visual tokens, built on the meta device."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from lmm.model.build import build_model
from lmm.model.lmm import COMPONENTS


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(cfg: DictConfig) -> dict:
    """Build the configured model without weights or memory and print its table.

    Trainable counts follow the configured stage (`stage.train`). No file is read and no
    network is touched: real-size models are built from their `arch` on the meta device.
    """
    with torch.device("meta"):
        model = build_model(cfg, image_token_id=-1, load_weights=False)
    model.set_trainable(dict(cfg.stage.train), cfg.stage.get("vision_last_blocks"))
    rows = []
    for name in COMPONENTS:
        module = getattr(model, name)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows.append((name, type(module).__name__, count_parameters(module), trainable))
    total = sum(r[2] for r in rows)
    trainable = sum(r[3] for r in rows)
    print(f"model: vision={cfg.vision.get('pretrained') or 'random-init'}  llm={cfg.llm.model.get('pretrained') or 'random-init'}  stage={cfg.stage.name}")
    print(f"{'component':10s} {'class':22s} {'parameters':>16s} {'trainable':>16s}")
    for name, cls, n, t in rows:
        print(f"{name:10s} {cls:22s} {n:16,d} {t:16,d}")
    print(f"{'total':10s} {'':22s} {total:16,d} {trainable:16,d}")
    print(f"visual tokens per image: {model.num_image_tokens} (from {model.vision.num_patches} patches)")
    return {
        "components": {name: {"parameters": n, "trainable": t} for name, _, n, t in rows},
        "visual_tokens": model.num_image_tokens,
        "patches": model.vision.num_patches,
    }
