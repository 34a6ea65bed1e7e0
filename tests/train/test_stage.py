"""The stage object: built from conf/stage/ by _target_, applied in one place, validated."""

import pytest
import torch

from lmm.build.factory import build_run
from lmm.build.stage import Stage, stage_of
from tests.conftest import compose_config


def test_conf_stages_build_their_objects():
    lora = stage_of(compose_config(["stage=lora"]))
    assert isinstance(lora, Stage) and lora.lora["r"] == 128 and lora.optim.component_lr == {"connector": 2e-5}
    pretrain = stage_of(compose_config(["stage=pretrain"]))
    assert (
        pretrain.template == "plain"
        and pretrain.optim.lr == 1e-3
        and pretrain.train == {"vision": False, "connector": True, "llm": False}
    )
    finetune = stage_of(compose_config(["stage=finetune"]))
    assert finetune.template == "vicuna_v1" and finetune.train["llm"] and finetune.optim.betas == (0.9, 0.999)


def test_bad_stage_options_are_refused():
    with pytest.raises(ValueError, match="component_lr names"):
        Stage(train={"connector": True}, optim={"lr": 1e-3, "component_lr": {"projector": 1e-4}})
    with pytest.raises(ValueError, match="needs r and alpha"):
        Stage(train={"connector": True}, optim={"lr": 1e-3}, lora={"rank": 8})


def test_load_trained_adds_then_merges_the_adapters(data_root):
    """A LoRA stage's trained state (adapter keys) loads into a freshly built model and comes
    out merged: the plain keys final.safetensors holds, with the adapters' effect."""
    cfg = compose_config(["stage=lora", "stage.lora.r=4", "stage.lora.alpha=8"], data_root)
    stage = stage_of(cfg)
    torch.manual_seed(0)
    trained = stage.apply(build_run(cfg)[0]).eval()  # no LoRA dropout
    for name, p in trained.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(5, 200, (1, 9))
    with torch.no_grad():
        expected = trained.llm(input_ids=ids).logits
    torch.manual_seed(1)
    merged = stage.load_trained(build_run(cfg)[0], trained.state_dict()).eval()
    assert not any("lora" in key for key in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged.llm(input_ids=ids).logits, expected, atol=1e-5)
