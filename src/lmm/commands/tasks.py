"""Map `cfg.task` to the function that runs it; a user's mistake ends in one line, not a traceback."""

from __future__ import annotations

import os

from hydra.errors import CompactHydraException
from omegaconf import DictConfig


class UserError(CompactHydraException):
    """Printed by Hydra as its message alone (the traceback with HYDRA_FULL_ERROR=1)."""


class SubmissionRefused(CompactHydraException):
    """SLURM refused a sweep's job (sbatch's own words), printed by Hydra as one line."""


def one_line_submission_errors() -> None:
    """hydra/launcher=slurm: when sbatch refuses a job (an unknown partition or account, a limit),
    submitit raises FailedJobError with sbatch's stderr under a long traceback, in Hydra's process
    before any lmm code runs. The launcher submits through submitit's AutoExecutor.map_array, which
    is wrapped here to raise that as one `[lmm]` line (the launcher class itself cannot be: Hydra
    re-imports its plugin modules when it scans them)."""
    try:
        from submitit import AutoExecutor
        from submitit.core.utils import FailedJobError
    except ImportError:  # no SLURM support installed: nothing to wrap
        return
    if getattr(AutoExecutor.map_array, "one_line", False):
        return
    original = AutoExecutor.map_array

    def map_array(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except FailedJobError as e:
            said = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:500]
            who = "SLURM" if getattr(self, "cluster", "slurm") == "slurm" else f"submitit ({self.cluster})"
            raise SubmissionRefused(
                f"[lmm] {who} refused the submission: {said or type(e).__name__} "
                "(check hydra.launcher.partition / account / qos and the cluster's limits)"
            ) from e

    map_array.one_line = True
    AutoExecutor.map_array = map_array


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe a bad config, input or run directory, each with its fix in the message."""
    from lmm.core.ranks import AgreedStop
    from lmm.run.directory import RunDirectoryInUse, RunMismatch

    return ValueError, FileNotFoundError, AgreedStop, RunMismatch, RunDirectoryInUse


def limit_cpu_threads(threads: int | None) -> None:
    """`cpu_threads=N`: this run's share of the cores when several runs share a machine (tiny models
    gain little from a second thread, so two one-thread runs side by side finish sooner than two in turn)."""
    if threads is None:
        return
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"cpu_threads={threads!r}: give a whole number of threads >= 1, or null for torch's default")
    import torch

    torch.set_num_threads(threads)


def accept(cfg: DictConfig) -> None:
    """This command may write its run directory: its log and its saved config."""
    from lmm.core.ranks import first_process
    from lmm.run import log as runlog
    from lmm.run.directory import save_run_config

    if first_process():
        save_run_config(cfg.run_dir, cfg)
        runlog.accept()


def run_task(cfg: DictConfig):
    from lmm.analysis.describe import describe
    from lmm.analysis.simulate.task import simulate
    from lmm.core import console
    from lmm.core.config import check_top_level_keys
    from lmm.eval.evaluate import evaluate_run
    from lmm.interop.export import export
    from lmm.run.log import copied_to, log_path, record
    from lmm.train.train import train

    tasks = {"train": train, "describe": describe, "eval": evaluate_run, "export": export, "simulate": simulate}
    console.setup()
    with copied_to(log_path(cfg)):  # the [lmm] lines, errors included, also go to RUN_DIR/run.log
        try:
            check_top_level_keys(cfg)
            if cfg.task not in tasks:
                raise ValueError(f"task={cfg.task!r} is not one of {sorted(tasks)}")
            limit_cpu_threads(cfg.cpu_threads)
            if (
                cfg.task != "train"
            ):  # its own directory: accepted now (train accepts once it holds the run: lmm.train.train)
                accept(cfg)
            return tasks[cfg.task](cfg)
        except user_errors() as e:
            message = f"[lmm] {type(e).__name__}: {e}"
            record(message)  # Hydra prints it on the terminal
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise UserError(message) from e
        except Exception as e:
            record(f"[lmm] failed: {type(e).__name__}: {e}")  # the traceback follows on the terminal
            raise
