"""Every config option composes; bad options fail with Hydra's list; describe counts are exact."""

from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from lmm.describe import describe
from lmm.model.build import build_model
from tests.conftest import CONF, compose_config

GROUPS = ["vision", "connector", "llm", "data", "stage", "trainer", "strategy", "eval", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg.task == "train"
    if group == "experiment":
        assert cfg.name == option  # every experiment names its runs


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("vision", options("vision"))
@pytest.mark.parametrize("connector", options("connector"))
@pytest.mark.parametrize("llm", ["tiny", "small", "vicuna7b"])
def test_every_model_combination_builds_on_meta(vision, connector, llm):
    cfg = compose_config([f"vision={vision}", f"connector={connector}", f"llm={llm}"])
    with torch.device("meta"):
        model = build_model(cfg, image_token_id=-1, load_weights=False)
    pixels = torch.empty(2, 3, model.vision.image_size, model.vision.image_size, device="meta")
    visual = model.encode_images(pixels)
    assert tuple(visual.shape) == (2, model.num_image_tokens, model.llm.config.hidden_size)


def test_unknown_connector_lists_the_options():
    with pytest.raises(MissingConfigException) as error:
        compose_config(["connector=foo"])
    message = str(error.value)
    for option in options("connector"):
        assert option in message


def test_describe_llava15_13b_counts(capsys):
    cfg = compose_config(["task=describe", "connector=mlp", "llm=vicuna13b", "vision=clip_l14_336"])
    table = describe(cfg)
    assert table["components"]["connector"]["parameters"] == 31_467_520
    assert table["components"]["llm"]["parameters"] == 13_015_864_320
    assert table["components"]["vision"]["parameters"] == 303_507_456
    assert table["components"]["vision"]["trainable"] == 0  # finetune stage: tower frozen
    assert table["visual_tokens"] == 576
    out = capsys.readouterr().out
    assert "31,467,520" in out and "13,015,864,320" in out


def test_describe_pretrain_stage_trains_only_the_connector():
    cfg = compose_config(["task=describe", "llm=vicuna7b", "vision=clip_l14_336", "stage=pretrain"])
    table = describe(cfg)
    assert table["components"]["connector"]["trainable"] == table["components"]["connector"]["parameters"]
    assert table["components"]["llm"]["trainable"] == 0
    assert table["components"]["llm"]["parameters"] == 6_738_415_616


def test_run_dir_is_derived_from_overrides():
    from lmm.config import run_id

    assert run_id("") == "default"
    assert run_id("connector=mlp,seed=1") == "connector=mlp,seed=1"
    assert "/" not in run_id("stage.init_from=experiments/runs/x")
    long = run_id("a=" + "x" * 300)
    assert len(long) <= 120 and long == run_id("a=" + "x" * 300) and long != run_id("a=" + "x" * 299)
