"""lmm entry point: compose the Hydra config and dispatch on cfg.task. Nothing else."""

import hydra
from omegaconf import DictConfig

from lmm.commands.tasks import one_line_submission_errors
from lmm.core.config import register_resolvers

register_resolvers()
one_line_submission_errors()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from lmm.commands.tasks import run_task

    run_task(cfg)


if __name__ == "__main__":
    main()
