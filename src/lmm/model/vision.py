"""Vision towers: pixels [B, 3, H, W] -> patch features [B, P, Dv] from a selectable layer."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from lmm.weights import resolve_weights

SELECT_FEATURES = ("patch", "cls_patch")


class VisionTower(nn.Module):
    """Shared contract of every tower.

    [Contract] `forward(pixels)` returns `[B, num_patches, hidden_size]` (plus one token when
    `select_feature == "cls_patch"`); `num_patches` is known without running the model, so
    sequence lengths are known before any image is seen.
    """

    image_size: int
    patch_size: int
    hidden_size: int
    num_prefix_tokens: int = 1  # CLS

    def __init__(self, select_layer: int, select_feature: str, mean: tuple, std: tuple, image_aspect: str):
        super().__init__()
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got {select_feature!r}")
        self.select_layer, self.select_feature = select_layer, select_feature
        self.mean, self.std, self.image_aspect = tuple(mean), tuple(std), image_aspect

    @property
    def num_patches(self) -> int:
        grid = self.image_size // self.patch_size
        return grid * grid + (self.num_prefix_tokens if self.select_feature == "cls_patch" else 0)

    def _select(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: [B, prefix + P, Dv]
        return tokens if self.select_feature == "cls_patch" else tokens[:, self.num_prefix_tokens :]


class CLIPVisionTower(VisionTower):
    """A Hugging Face CLIP vision transformer (random-init from `arch`, or weights from `pretrained`)."""

    def __init__(
        self,
        arch: dict,
        pretrained: str | None = None,
        load_weights: bool = True,
        select_layer: int = -2,
        select_feature: str = "patch",
        image_aspect: str = "pad",
        mean: tuple = (0.48145466, 0.4578275, 0.40821073),
        std: tuple = (0.26862954, 0.26130258, 0.27577711),
    ):
        super().__init__(select_layer, select_feature, mean, std, image_aspect)
        config = CLIPVisionConfig(**arch)
        if pretrained and load_weights:
            self.model = CLIPVisionModel.from_pretrained(str(resolve_weights(pretrained, "vision weights")))
            config = self.model.config
        else:
            self.model = CLIPVisionModel(config)
        self.image_size, self.patch_size, self.hidden_size = config.image_size, config.patch_size, config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=True)
        return self._select(out.hidden_states[self.select_layer])  # [B, P, Dv]


class TimmVisionTower(VisionTower):
    """A timm ViT; features are the output of block `select_layer` (negative counts from the end)."""

    def __init__(
        self,
        model_name: str,
        arch: dict | None = None,
        pretrained: str | None = None,
        load_weights: bool = True,
        select_layer: int = -2,
        select_feature: str = "patch",
        image_aspect: str = "pad",
        mean: tuple = (0.5, 0.5, 0.5),
        std: tuple = (0.5, 0.5, 0.5),
    ):
        import timm

        super().__init__(select_layer, select_feature, mean, std, image_aspect)
        kwargs = dict(arch or {})
        if pretrained and load_weights:
            path = resolve_weights(pretrained, "vision weights")
            weights = path / "model.safetensors" if path.is_dir() else path
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        self.model = timm.create_model(model_name, pretrained=bool(pretrained and load_weights), num_classes=0, **kwargs)
        self.image_size = self.model.patch_embed.img_size[0]
        self.patch_size = self.model.patch_embed.patch_size[0]
        self.hidden_size = self.model.embed_dim
        self.num_prefix_tokens = self.model.num_prefix_tokens

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        (layer,) = self.model.forward_intermediates(
            pixels, indices=[self.select_layer], norm=False, output_fmt="NLC",
            intermediates_only=True, return_prefix_tokens=True, stop_early=True,
        )
        patches, prefix = layer  # [B, P, Dv], [B, prefix, Dv]
        return patches if self.select_feature == "patch" else torch.cat([prefix, patches], dim=1)
