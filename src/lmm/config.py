"""Config helpers: OmegaConf resolvers used by conf/ (run directory ids) and config checks."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_RUN_ID = 120


def run_id(override_dirname: str) -> str:
    """A filesystem-safe, stable directory name for a run's overrides.

    Runs are idempotent: the same overrides give the same directory, so re-running a command
    resumes it. Other characters (slashes, spaces) become '_' and the id gets a hash of the
    original, so `my data` and `my_data` never share a directory; over-long ids keep a readable
    prefix plus a hash.
    """
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+\-]", "_", override_dirname)
    if safe != override_dirname:
        safe = f"{safe}-{hashlib.sha1(override_dirname.encode()).hexdigest()[:10]}"
    if len(safe) <= MAX_RUN_ID:
        return safe
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: MAX_RUN_ID - 11]}-{digest}"


def slurm_tasks(devices) -> int:
    """SLURM tasks per node = trainer.devices (one process per device); "auto" is not a count."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    raise ValueError(f"hydra/launcher=slurm needs trainer.devices to be the number of devices per node, not {devices!r}")


def slurm_gpus(accelerator: str, devices) -> int | None:
    """GPUs per node to request: the devices when training on GPUs, none on CPU."""
    return slurm_tasks(devices) if accelerator in ("gpu", "cuda") else None


def register_resolvers() -> None:
    for name, function in (("run_id", run_id), ("slurm_tasks", slurm_tasks), ("slurm_gpus", slurm_gpus)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
