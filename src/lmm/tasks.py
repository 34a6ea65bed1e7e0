"""Map `cfg.task` to the function that runs it."""

from __future__ import annotations

from omegaconf import DictConfig


def run_task(cfg: DictConfig):
    from lmm.config import check_top_level_keys
    from lmm.describe import describe
    from lmm.export import export
    from lmm.train.train import evaluate_run, train

    check_top_level_keys(cfg)
    tasks = {"train": train, "describe": describe, "eval": evaluate_run, "export": export}
    if cfg.task not in tasks:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(tasks)}")
    return tasks[cfg.task](cfg)
