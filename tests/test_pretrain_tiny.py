"""The pretrained tiny parts: lmm.commands.pretrain_tiny's pieces, and the shipped weights in pretrained/tiny."""

import json
import random

import pytest
import torch
from hydra.utils import instantiate

from lmm.build.model import build_tower
from lmm.commands.pretrain_tiny import (
    DEFAULT_SETTINGS,
    ContrastivePair,
    Settings,
    at_resolution,
    llm_arch,
    pretrain_tiny,
    scene_text_pairs,
    tower_arch,
)
from lmm.data.synthetic import describe_scene, make_sample
from lmm.data.tokenizer import load_tokenizer
from tests.conftest import CONF, compose_config

SHIPPED = CONF.parent / "pretrained"


def test_wider_tower_interpolates_position_embeddings():
    pair = ContrastivePair(tower_arch(), vocab_size=64, bos=0, eos=1, pad=2)
    table = pair.vision.embeddings.position_embedding.weight  # [1 + 8*8, D]
    with torch.no_grad():
        table[1:] = torch.linspace(-1, 1, table.shape[1])  # one row for every patch: interpolation keeps it
    wide = at_resolution(pair, 128)
    wide_table = wide.vision.embeddings.position_embedding.weight
    assert wide_table.shape == (1 + 16 * 16, table.shape[1])
    assert torch.equal(wide_table[0], table[0]) and torch.allclose(
        wide_table[1:], table[1:2].expand(256, -1), atol=1e-6
    )
    same = at_resolution(pair, 64)  # the same size: the same tower
    pixels = torch.randn(2, 3, 64, 64)
    assert torch.allclose(same.embed_images(pixels), pair.embed_images(pixels), atol=1e-6)
    assert wide.embed_images(torch.randn(2, 3, 128, 128)).shape == (2, tower_arch()["hidden_size"])
    with torch.no_grad():  # a copy: training the wide tower leaves the 64 px one alone
        wide.vision.post_layernorm.weight.add_(1.0)
    assert torch.equal(pair.vision.post_layernorm.weight, torch.ones_like(table[0]))


def test_pairs_describe_their_images():
    pairs = scene_text_pairs(random.Random(0), 200, "free")
    words = [text for _, text in pairs if text.startswith("The word")]
    assert 25 <= len(words) <= 75  # 1 in 4 written words, the rest object scenes
    scene, _ = make_sample(random.Random(1), "description", 0, "free")
    assert describe_scene(scene).startswith(f"The image shows {len(scene.objects)} object")


@pytest.mark.slow
def test_pretrain_tiny_writes_loadable_parts_deterministically(tmp_path):
    settings = dict(settings=Settings(tower_steps=2, high_res_steps=1, llm_steps=2), pairs=32, chats=32, held_out=16)
    report = pretrain_tiny(tmp_path / "a", **settings)
    pretrain_tiny(tmp_path / "b", **settings)
    weights = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert [str(p.parent) for p in weights] == ["llm", "llm_x2", "vision", "vision_128"]
    assert all(
        (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in weights
    )  # same args, same bytes
    assert {"vision", "vision_128", "llm", "llm_x2", "seconds"} <= set(report)
    assert json.loads((tmp_path / "a" / "pretrain.json").read_text())["settings"]["tower_steps"] == 2
    tokenizer = load_tokenizer(str(tmp_path / "a" / "tokenizer"))
    cfg = compose_config(["vision=tiny_pretrained_128", "llm=tiny_x2_pretrained"])
    assert cfg.vision.pretrained.endswith("vision_128")
    tower = build_tower(cfg.vision, pretrained=str(tmp_path / "a" / "vision_128"))
    assert (tower.image_size, tower.patch_size) == (128, 8)
    llm = instantiate(cfg.llm.model, pretrained=str(tmp_path / "a" / "llm_x2"))
    assert llm.config.hidden_size == 160 and len(tokenizer) <= llm.config.vocab_size


def test_the_larger_llm_is_about_twice_the_tiny_one():
    """make table2's larger-LLM row: 1.9x the parameters, as Vicuna-13B is to 7B."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def parameters(size: str) -> int:
        arch = llm_arch(size)
        arch.pop("model_type")
        return sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**arch)).parameters())

    assert 1.8 < parameters("tiny_x2") / parameters("tiny") < 2.0


@pytest.mark.skipif(not (SHIPPED / "tiny" / "pretrain.json").exists(), reason="pretrained/tiny is not built")
def test_shipped_weights_were_made_by_the_documented_command():
    shipped = json.loads((SHIPPED / "tiny" / "pretrain.json").read_text())
    assert {k: shipped["settings"][k] for k in DEFAULT_SETTINGS} == DEFAULT_SETTINGS  # `make pretrain-tiny`'s
    assert shipped["vision"]["held_out_image_to_text_top1"] > 20 * shipped["vision"]["chance"]
    assert shipped["llm"]["held_out_loss"] < 1.0 and shipped["llm_x2"]["held_out_loss"] < 1.0
    for vision, llm in (("tiny_pretrained", "tiny_pretrained"), ("tiny_pretrained_128", "tiny_x2_pretrained")):
        cfg = compose_config([f"vision={vision}", f"llm={llm}", f"paths.pretrained={SHIPPED}"])
        tokenizer = load_tokenizer(cfg.llm.tokenizer)
        assert len(tokenizer) <= instantiate(cfg.llm.model).config.vocab_size
        assert build_tower(cfg.vision).image_size == cfg.vision.arch.image_size
