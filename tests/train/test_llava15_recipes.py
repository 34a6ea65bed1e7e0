"""Each LLaVA-1.5 experiment runs end to end for its one epoch (tiny parts, converted miniatures):
`stage.epochs` with `trainer.max_steps: -1` is the recipe's own setting, and the step count is
ceil(samples × epochs / global batch)."""

import json
import math

import pytest

from lmm.train.train import train
from tests.conftest import compose_config

TINY = [
    "vision=tiny",
    "llm=tiny",
    "trainer=cpu",
    "strategy=auto",
    "data.batch_size=2",
    "stage.global_batch_size=4",
    "activation_checkpointing=false",
    "tf32=false",
    "trainer.enable_progress_bar=false",
    "data.num_workers=0",
    "eval_after_train=false",
    "data.max_length=512",
    "checkpoint_every=50",
]


def samples(root, folder: str) -> int:
    return sum(json.loads((root / "shards" / folder / "manifest.json").read_text())["counts"].values())


def run(root, tmp_path, experiment: str, *extra: str) -> dict:
    cfg = compose_config([f"experiment={experiment}", *TINY, *extra], root, tmp_path / experiment)
    assert cfg.stage.epochs == 1 and cfg.trainer.max_steps == -1
    return train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["7b", "13b"])
def test_two_stage_recipe_trains_one_epoch(pretrain558k_root, tmp_path, size):
    pretrain = run(pretrain558k_root, tmp_path, f"llava15_{size}_pretrain")
    assert pretrain["cost"]["steps"] == math.ceil(samples(pretrain558k_root, "llava_pretrain") / 4)
    finetune = run(
        pretrain558k_root, tmp_path, f"llava15_{size}", f"stage.init_from={tmp_path / f'llava15_{size}_pretrain'}"
    )
    assert finetune["cost"]["steps"] == math.ceil(samples(pretrain558k_root, "llava_mix665k") / 4)


@pytest.mark.slow
def test_single_stage_recipe_trains_one_epoch(mix665k_root, tmp_path):
    results = run(mix665k_root, tmp_path, "llava15_7b_single_stage")
    assert results["cost"]["steps"] == math.ceil(samples(mix665k_root, "llava_mix665k") / 4)
