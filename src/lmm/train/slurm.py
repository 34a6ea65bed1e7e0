"""Running under SLURM: Lightning reads ranks from SLURM's variables; submitit owns requeueing.

With `hydra/launcher=slurm`, submitit starts one task per GPU (tasks_per_node = trainer.devices)
and handles the preemption/time-limit signal by requeueing the job; Lightning's own SLURM
auto-requeue is switched off so that the signal has one owner. A requeued job runs the same
command, lands in the same run directory and resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from lmm.run.plan import world_size


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


def record_job(run_dir: Path) -> None:
    """Append this SLURM job (id, restart count) to RUN_DIR/slurm_jobs.txt: which jobs worked on a run."""
    if in_slurm_job() and os.environ.get("SLURM_PROCID", "0") == "0":
        with open(run_dir / "slurm_jobs.txt", "a") as f:
            f.write(f"{os.environ.get('SLURM_JOB_ID')} restart={os.environ.get('SLURM_RESTART_COUNT', '0')}\n")


class CheckpointBeforeRequeue(L.Callback):
    """submitit owns the preemption signal (USR2) and requeues the job; this callback runs before
    it: the signal is noted, every rank agrees at the next step boundary, a checkpoint is written,
    and only then submitit's handler requeues (and ends) the job."""

    def __init__(self, checkpoint_path: Path, signum: int = signal.SIGUSR2):
        self.checkpoint_path, self.signum = checkpoint_path, signum
        self.previous = None
        self.pending: tuple | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        previous = signal.getsignal(self.signum)
        if callable(previous):  # only when someone (submitit) will requeue
            self.previous = previous
            signal.signal(self.signum, self._note)

    def _note(self, signum, frame) -> None:
        self.pending = (signum, frame)

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.previous is None or not trainer.strategy.reduce_boolean_decision(self.pending is not None, all=False):
            return
        checkpoint = next(c for c in trainer.checkpoint_callbacks)
        checkpoint._save_checkpoint(trainer, str(self.checkpoint_path))
        print(f"[lmm] checkpoint written at step {trainer.global_step} before requeue", flush=True)
        self.previous(*(self.pending or (self.signum, None)))
