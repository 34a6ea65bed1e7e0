"""Running under SLURM: Lightning reads ranks from SLURM's variables; submitit owns requeueing.

With `hydra/launcher=slurm`, submitit starts one task per GPU (tasks_per_node = trainer.devices)
and handles the preemption/time-limit signal by requeueing the job; Lightning's own SLURM
auto-requeue is switched off so that the signal has one owner. A requeued job runs the same
command, lands in the same run directory and resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from lmm.train.plan import world_size


def in_slurm_job() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def cluster_plugins() -> list:
    """SLURMEnvironment without auto-requeue inside a SLURM job (submitit requeues), else none."""
    if not in_slurm_job():
        return []
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def check_slurm_tasks(trainer: DictConfig) -> None:
    """Inside a SLURM job, the tasks must be the trainer's devices × nodes (one process per device)."""
    if not in_slurm_job():
        return
    tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if tasks != world_size(trainer):
        raise ValueError(
            f"SLURM started {tasks} task(s) but trainer.devices × trainer.num_nodes = {world_size(trainer)}; "
            "with hydra/launcher=slurm they follow the launcher's gpus_per_node and nodes"
        )
