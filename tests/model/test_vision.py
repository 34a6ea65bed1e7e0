"""Vision towers return patch features of the selected layer with the advertised count."""

import torch
from hydra.utils import instantiate

from tests.conftest import compose_config


def tower(name: str, **overrides):
    cfg = compose_config([f"vision={name}", *[f"vision.{k}={v}" for k, v in overrides.items()]])
    torch.manual_seed(0)
    return instantiate(cfg.vision)


def test_clip_tower_drops_cls_and_selects_layer():
    vision = tower("tiny")
    pixels = torch.randn(2, 3, 64, 64)
    features = vision(pixels)
    assert vision.num_patches == 64
    assert features.shape == (2, 64, 64)
    hidden = vision.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(features, hidden[-2][:, 1:])


def test_clip_tower_cls_patch_keeps_cls():
    vision = tower("tiny", select_feature="cls_patch", select_layer=-1)
    assert vision.num_patches == 65
    assert vision(torch.randn(1, 3, 64, 64)).shape == (1, 65, 64)


def test_timm_tower_shape():
    vision = tower("tiny_timm")
    assert vision.num_patches == 64
    assert vision(torch.randn(2, 3, 64, 64)).shape == (2, 64, 64)
    assert tower("tiny_timm", select_feature="cls_patch")(torch.randn(1, 3, 64, 64)).shape == (1, 65, 64)
