"""task=describe: per-component parameter counts and visual tokens, built on the meta device;
for a recipe (`recipe_stages`), every stage's trainable parameters, batch plan and, under
strategy=fsdp, a per-GPU memory estimate."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmm.build.model import build_model
from lmm.build.stage import stage_of
from lmm.core.config import CONF, command_overrides
from lmm.model.lmm import COMPONENTS


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(cfg: DictConfig):
    """The configured model with its stage applied (trainable flags, LoRA), on the meta device
    (no memory, no files)."""
    with torch.device("meta"):
        return stage_of(cfg).apply(build_model(cfg, image_token_id=-1, load_weights=False))


def describe(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Build the configured model without weights or memory and print its table.

    Trainable counts follow the configured stage (`stage.train`). No file is read and no
    network is touched: real-size models are built from their `arch` on the meta device.
    """
    model = meta_model(cfg)
    rows = []
    for name in COMPONENTS:
        module = getattr(model, name)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows.append((name, type(module).__name__, count_parameters(module), trainable))
    total = sum(r[2] for r in rows)
    trainable = sum(r[3] for r in rows)
    print(
        f"model: vision={cfg.vision.get('pretrained') or 'random-init'}  "
        f"llm={cfg.llm.model.get('pretrained') or 'random-init'}  stage={cfg.stage.name}"
    )
    print(f"{'component':10s} {'class':22s} {'parameters':>16s} {'trainable':>16s}")
    for name, cls, n, t in rows:
        print(f"{name:10s} {cls:22s} {n:16,d} {t:16,d}")
    print(f"{'total':10s} {'':22s} {total:16,d} {trainable:16,d}")
    summary = {
        "components": {name: {"parameters": n, "trainable": t} for name, _, n, t in rows},
        "visual_tokens": model.num_image_tokens,
        "patches": model.vision.num_patches,
        "visual_tokens_by_size": describe_image_sizes(model, cfg.get("describe", {}).get("image_sizes") or []),
    }
    stages = cfg.get("recipe_stages") or []
    summary["stages"] = {name: describe_stage(stage_config(cfg, name, overrides)) for name in stages}
    if not stages:
        summary["stages"] = {cfg.name: describe_stage(cfg, model)}
    return summary


def describe_image_sizes(model, sizes: list) -> dict[str, dict]:
    """Visual tokens (and tower inputs) per image, for each (height, width) in `sizes`: one count
    for every image, or under AnyRes the count each size makes."""
    native = model.connector.num_tokens(model.vision.num_patches)
    budget = (
        f"; connector.tokens={model.num_image_tokens}: the connector's {native} grid tokens average-pooled"
        if model.pooled_side is not None
        else ""
    )
    print(f"visual tokens per view: {model.num_image_tokens} (from {model.vision.num_patches} patches{budget})")
    if model.anyres is None:
        print(
            f"visual tokens per image: {model.num_image_tokens}, whatever its size "
            f"(vision.image_aspect={model.vision.image_aspect})"
        )
    out = {}
    for height, width in sizes:
        views, tokens = (
            (1, model.num_image_tokens)
            if model.anyres is None
            else (model.anyres.num_views(height, width), model.image_tokens(height, width))
        )
        out[f"{width}x{height}"] = {"height": height, "width": width, "visual_tokens": tokens, "views": views}
        if model.anyres is not None:
            rows, cols = model.anyres.grid(height, width)
            overview = " (overview + " if model.anyres.overview else " ("
            print(
                f"  image {width}×{height} (w×h): {tokens} visual tokens from {views} views{overview}{rows}×{cols} "
                "tiles)"
            )
    return out


def stage_config(cfg: DictConfig, experiment: str, overrides: list[str] | None = None) -> DictConfig:
    """`experiment` composed with this command's other overrides (the same devices, data, ...)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if experiment == cfg.name:
        return cfg
    overrides = command_overrides() if overrides is None else overrides
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("experiment=")]
    overrides = [f"experiment={experiment}", *overrides]
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def describe_stage(cfg: DictConfig, model=None) -> dict:
    """One stage: trainable parameters, the batch plan and (under FSDP) memory per GPU."""
    from lmm.run.plan import batch_plan
    from lmm.train.memory import GIB, fsdp_memory_estimate
    from lmm.train.strategy import FSDP2Strategy

    model = model or meta_model(cfg)
    trainable = {
        name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad) for name in COMPONENTS
    }
    plan = batch_plan(cfg)
    steps = (
        plan.max_steps
        if plan.max_steps is not None
        else f"{cfg.stage.epochs} epoch(s) of {cfg.data.root} (not converted yet)"
    )
    print(f"\nstage {cfg.name} ({cfg.stage.name}): trainable " + ", ".join(f"{k} {v:,d}" for k, v in trainable.items()))
    print(
        f"  global batch {plan.global_batch} = {plan.per_device} per device × {plan.world} device(s) × "
        f"{plan.accumulation} gradient-accumulation step(s); steps: {steps}"
    )
    out = {
        "trainable": trainable,
        "global_batch": plan.global_batch,
        "accumulation": plan.accumulation,
        "devices": plan.world,
        "steps": plan.max_steps,
    }
    if isinstance(instantiate(cfg.strategy), FSDP2Strategy):
        memory = fsdp_memory_estimate(model, cfg, plan.world)
        print(
            f"  FSDP memory per GPU (estimate, every sequence at data.max_length={cfg.data.max_length}): "
            f"{memory['total'] / GIB:.1f} GiB at the peak of "
            + ", ".join(f"{kind} {value / GIB:.1f}" for kind, value in memory.items() if kind != "total")
        )
        print("  (lmm train ... task=simulate measures it on fake tensors, with the step time over 8-512 GPUs)")
        out["memory_per_gpu_bytes"] = memory
    return out
