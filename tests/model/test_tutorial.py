"""docs/adding_a_connector.md, followed step by step with its own code blocks: the class, its
export, the yaml; the new connector then passes what every connector passes."""

import re
import sys
import types
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lmm.model.connectors
from lmm.build.model import build_model
from tests.conftest import compose_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding_a_connector.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)


def test_the_tutorial_connector_works_as_written(monkeypatch):
    # 1. The class, in its own module.
    module = types.ModuleType("lmm.model.connectors.avgpool")
    exec(compile(blocks("python")[0], str(DOC), "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # 2. The export line, as the page writes it.
    exports: dict = {}
    exec(blocks("python")[1], exports)
    monkeypatch.setattr(lmm.model.connectors, "AvgPoolConnector", exports["AvgPoolConnector"], raising=False)
    # 3. The yaml.
    spec = yaml.safe_load(blocks("yaml")[0])
    connector = instantiate(spec, vision_dim=24, llm_dim=32)
    patches = torch.randn(2, 36, 24, requires_grad=True)  # a 6x6 grid
    out = connector(patches)
    assert out.shape == (2, connector.num_tokens(36), 32) == (2, 9, 32)
    out.square().mean().backward()
    assert patches.grad.abs().sum() > 0 and connector.spatial
    assert sum(p.numel() for p in connector.parameters()) == connector.formula_parameters()
    # 4. Built at real size (meta device), as `python run.py connector=avgpool ...` would.
    cfg = compose_config(["vision=clip_l14_336", "llm=vicuna7b"])
    cfg.connector = OmegaConf.create(spec)
    with torch.device("meta"):
        model = build_model(cfg, image_token_id=-1, load_weights=False)
    assert model.num_image_tokens == 144 and sum(p.numel() for p in model.connector.parameters()) == 1024 * 4096 + 4096
