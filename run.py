"""lmm entry point: compose the Hydra config and dispatch on cfg.task. Nothing else."""

import hydra
from omegaconf import DictConfig

from lmm.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from lmm.tasks import run_task

    run_task(cfg)


if __name__ == "__main__":
    main()
