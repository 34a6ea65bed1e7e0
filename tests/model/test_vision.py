"""Vision towers return patch features of the selected layer with the advertised count."""

import pytest
import torch

from lmm.build.model import build_tower
from tests.conftest import CONF, compose_config

TINY = sorted(p.stem for p in (CONF / "vision").glob("tiny*.yaml"))


def tower(name: str, *overrides: str):
    cfg = compose_config([f"vision={name}", *[f"vision.{o}" for o in overrides]])
    torch.manual_seed(0)
    return build_tower(cfg.vision)


@pytest.mark.parametrize("name", TINY)
def test_tiny_towers_shapes_and_backward(name):
    vision = tower(name)
    pixels = torch.randn(2, 3, vision.image_size, vision.image_size, requires_grad=True)
    features = vision(pixels)
    patches = (vision.image_size // 8) ** 2  # 64 at 64 px, 256 at 128 px (8 px patches)
    assert features.shape == (2, vision.num_patches, vision.hidden_size) == (2, patches, 128)
    features.mean().backward()
    assert pixels.grad.abs().sum() > 0
    assert len(vision.blocks()) >= 3


def test_every_family_has_a_tiny_variant():
    assert {"tiny", "tiny_siglip", "tiny_dinov2", "tiny_eva", "tiny_dinosiglip"} <= set(TINY)


def test_clip_tower_drops_cls_and_selects_layer():
    vision = tower("tiny")
    pixels = torch.randn(2, 3, 64, 64)
    hidden = vision.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(vision(pixels), hidden[-2][:, 1:])
    cls_last = tower("tiny", "select_feature=cls_patch", "select_layer=-1")
    assert cls_last.num_patches == 65
    torch.testing.assert_close(
        cls_last(pixels), cls_last.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    )


def test_timm_select_layer_matches_block_output():
    vision = tower("tiny_dinov2")
    pixels = torch.randn(1, 3, 64, 64)
    model = vision.model
    x = model._pos_embed(model.patch_embed(pixels))
    x = model.norm_pre(x)
    for block in model.blocks[:-1]:  # -2 in HF terms: the output of the second-to-last block
        x = block(x)
    torch.testing.assert_close(vision(pixels), x[:, model.num_prefix_tokens :])
    assert tower("tiny_dinov2", "select_feature=cls_patch")(pixels).shape == (1, 65, 128)


def test_siglip_has_no_cls():
    with pytest.raises(Exception, match="no CLS token"):
        tower("tiny_siglip", "select_feature=cls_patch")


def test_fused_tower_concatenates_normalised_towers():
    fused = tower("tiny_dinosiglip")
    pixels = torch.rand(2, 3, 64, 64)  # [0, 1]: the fused tower normalises per sub-tower
    dino, siglip = fused.towers
    expected = torch.cat(
        [
            dino((pixels - torch.tensor(dino.mean).view(1, 3, 1, 1)) / torch.tensor(dino.std).view(1, 3, 1, 1)),
            siglip((pixels - 0.5) / 0.5),
        ],
        dim=-1,
    )
    torch.testing.assert_close(fused(pixels), expected)
    assert fused.mean == (0.0, 0.0, 0.0) and fused.pad_colour == dino.mean


def test_fused_towers_must_share_the_grid():
    with pytest.raises(Exception, match="share image size and patch grid"):
        tower("tiny_dinosiglip", "towers.1.arch.patch_size=16")
