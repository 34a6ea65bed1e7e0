"""The batch plan of a run: the global batch is the invariant, everything else follows from it.

    global batch = per-device batch (data.batch_size) × devices × nodes × gradient accumulation

`stage.global_batch_size` fixes the left side (LLaVA-1.5: 256 for pretrain, 128 for finetune), so
the same command gives the same optimisation on 1 GPU or 64; accumulation is derived, and a
configuration that cannot divide evenly fails before any work. `stage.epochs` turns passes over
the data into optimiser steps (training streams are infinite, so steps are what the Trainer counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from lmm.data.shards import read_manifest


def world_size(trainer: DictConfig) -> int:
    """devices × nodes, from the trainer config (an int, a list of device ids, or "auto")."""
    devices = trainer.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        import torch

        devices = torch.cuda.device_count() if trainer.get("accelerator") in ("gpu", "cuda") else 1
        devices = max(1, devices)
    elif not isinstance(devices, int):
        try:
            devices = len(devices) if hasattr(devices, "__len__") and not isinstance(devices, str) else int(devices)
        except ValueError:
            devices = None
    nodes = trainer.get("num_nodes", 1)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"trainer.devices={trainer.get('devices')!r}: give a number of devices >= 1, a list of device ids, or auto"
        )
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"trainer.num_nodes={nodes!r}: must be a whole number >= 1")
    return devices * nodes


def accumulation(global_batch: int | None, per_device: int, world: int, configured: int = 1) -> int:
    """Gradient-accumulation steps that make `global_batch`; without one, the configured value."""
    if global_batch is None:
        return configured
    per_step = per_device * world
    if global_batch % per_step:
        raise ValueError(
            f"stage.global_batch_size={global_batch} is not a multiple of data.batch_size={per_device} × "
            f"{world} device(s) = {per_step}; change data.batch_size or the device count"
        )
    derived = global_batch // per_step
    if configured not in (1, derived):
        raise ValueError(
            f"trainer.accumulate_grad_batches={configured} contradicts stage.global_batch_size={global_batch} "
            f"(which needs {derived}); set only one of them"
        )
    return derived


def data_samples(data: DictConfig) -> int | None:
    """Training samples in one epoch of the configured data (natural size × weight), if known."""
    manifest = read_manifest(data.root)
    if manifest is None:
        return None
    counts = manifest["counts"]
    size = lambda value: sum(value.values()) if isinstance(value, dict) else int(value)  # noqa: E731
    if data.get("sources"):
        return round(
            sum(
                size(counts.get(name, 0)) * float((spec or {}).get("weight", 1.0))
                for name, spec in data.sources.items()
            )
        )
    return size(counts.get(data.train_split, 0)) or None


@dataclass
class BatchPlan:
    per_device: int
    world: int
    accumulation: int
    max_steps: int | None  # None: epochs requested but the data's size is unknown (not converted yet)
    epoch_samples: int | None

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world * self.accumulation


def batch_plan(cfg: DictConfig) -> BatchPlan:
    world = world_size(cfg.trainer)
    per_device = int(cfg.data.batch_size)
    accumulate = accumulation(
        cfg.stage.get("global_batch_size"), per_device, world, int(cfg.trainer.get("accumulate_grad_batches", 1))
    )
    epochs = cfg.stage.get("epochs")
    samples = data_samples(cfg.data) if epochs else None
    steps = int(cfg.trainer.max_steps)
    if epochs:
        steps = math.ceil(float(epochs) * samples / (per_device * world * accumulate)) if samples else None
    return BatchPlan(per_device, world, accumulate, steps, samples)
