"""Vision towers: pixels [B, 3, H, W] -> patch features [B, P, Dv] from a selectable layer."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from lmm.core.weights import resolve_weights

SELECT_FEATURES = ("patch", "cls_patch")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class VisionTower(nn.Module):
    """Shared contract of every tower.

    [Contract] `forward(pixels)` returns `[B, num_patches, hidden_size]`, where `num_patches`
    counts the grid (plus the CLS token when `select_feature == "cls_patch"`) and is known
    without running the model, so sequence lengths are known before any image is seen.
    `blocks()` lists the transformer blocks in order (for partial fine-tuning).
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

    def _check_prefix(self) -> None:
        if self.select_feature == "cls_patch" and self.num_prefix_tokens == 0:
            raise ValueError(f"{type(self).__name__} has no CLS token: use select_feature=patch")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid + (self.num_prefix_tokens if self.select_feature == "cls_patch" else 0)

    @property
    def pad_colour(self) -> tuple:
        """The colour (in [0, 1]) that pad-to-square fills with: the tower's mean, as LLaVA does."""
        return self.mean

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def used_blocks(self) -> nn.ModuleList:
        """The blocks that feed the selected layer (`select_layer=-2` leaves the last one out):
        only these can learn, and a trainable block that gets no gradient breaks DDP."""
        raise NotImplementedError

    def _select(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: [B, prefix + P, Dv] -> [B, P, Dv] (or unchanged for cls_patch)
        return tokens if self.select_feature == "cls_patch" else tokens[:, self.num_prefix_tokens :]


class HFVisionTower(VisionTower):
    """A Hugging Face vision transformer, random-init from `arch` or loaded from `pretrained`."""

    config_class: type
    model_class: type

    def __init__(
        self,
        arch: dict,
        pretrained: str | None = None,
        load_weights: bool = True,
        select_layer: int = -2,
        select_feature: str = "patch",
        image_aspect: str = "pad",
        mean: tuple = CLIP_MEAN,
        std: tuple = CLIP_STD,
    ):
        super().__init__(select_layer, select_feature, mean, std, image_aspect)
        config = self.config_class(**arch)
        if pretrained and load_weights:
            self.model = self.model_class.from_pretrained(str(resolve_weights(pretrained, "vision weights")))
            config = self.model.config
        else:
            self.model = self.model_class(config)
        self.image_size, self.patch_size, self.hidden_size = config.image_size, config.patch_size, config.hidden_size
        self._check_prefix()

    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def used_blocks(self) -> nn.ModuleList:
        # hidden_states[0] is the embedding output, hidden_states[k] the output of block k - 1.
        return self.blocks()[: self.select_layer % (len(self.blocks()) + 1)]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=True)
        return self._select(out.hidden_states[self.select_layer])  # [B, P, Dv]


class CLIPVisionTower(HFVisionTower):
    """CLIP ViT (LLaVA's tower): CLS + grid tokens; hidden_states[-2] is the second-to-last block."""

    config_class, model_class = CLIPVisionConfig, CLIPVisionModel


class SiglipVisionTower(HFVisionTower):
    """SigLIP ViT: grid tokens only (no CLS); the attention-pooling head is not used."""

    config_class, model_class = SiglipVisionConfig, SiglipVisionModel
    num_prefix_tokens = 0


class TimmVisionTower(VisionTower):
    """A timm ViT (DINOv2, EVA02-CLIP, OpenCLIP, ...); features are the output of block
    `select_layer` (negative counts from the end, so -2 is the second-to-last block as in HF)."""

    def __init__(
        self,
        model_name: str,
        arch: dict | None = None,
        pretrained: str | None = None,
        load_weights: bool = True,
        select_layer: int = -2,
        select_feature: str = "patch",
        image_aspect: str = "pad",
        mean: tuple = (0.485, 0.456, 0.406),
        std: tuple = (0.229, 0.224, 0.225),
    ):
        import timm

        super().__init__(select_layer, select_feature, mean, std, image_aspect)
        kwargs = dict(arch or {})
        if pretrained and load_weights:
            path = resolve_weights(pretrained, "vision weights")
            weights = path / "model.safetensors" if path.is_dir() else path
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        self.model = timm.create_model(
            model_name, pretrained=bool(pretrained and load_weights), num_classes=0, **kwargs
        )
        self.image_size = self.model.patch_embed.img_size[0]
        self.patch_size = self.model.patch_embed.patch_size[0]
        self.hidden_size = self.model.embed_dim
        self.num_prefix_tokens = self.model.num_prefix_tokens  # CLS (+ registers)
        self._check_prefix()

    @property
    def num_patches(self) -> int:
        # cls_patch keeps CLS only (register tokens carry no image position and are dropped).
        return self.grid * self.grid + (1 if self.select_feature == "cls_patch" else 0)

    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    def used_blocks(self) -> nn.ModuleList:
        return self.blocks()[: self.select_layer % len(self.blocks()) + 1]  # timm's index k: block k's output

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        (layer,) = self.model.forward_intermediates(
            pixels,
            indices=[self.select_layer],
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
            stop_early=True,
        )
        patches, prefix = layer  # [B, P, Dv], [B, prefix, Dv]
        return patches if self.select_feature == "patch" else torch.cat([prefix[:, :1], patches], dim=1)


class FusedVisionTower(VisionTower):
    """Several towers on the same patch grid, features concatenated along channels
    (prismatic-vlms' DINOv2 + SigLIP). Input pixels are in [0, 1] (mean 0, std 1); each
    sub-tower normalises with its own mean/std. Hidden size = sum of the towers'."""

    def __init__(self, towers: list, load_weights: bool = True, image_aspect: str = "pad"):
        super().__init__(-1, "patch", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), image_aspect)
        self.towers = nn.ModuleList(instantiate(t, load_weights=load_weights) for t in towers)
        grids = {(t.image_size, t.grid, t.num_patches) for t in self.towers}
        if len(grids) != 1:
            raise ValueError(
                f"fused towers must share image size and patch grid, got (size, grid, patches) = {sorted(grids)}"
            )
        first = self.towers[0]
        self.image_size, self.patch_size = first.image_size, first.patch_size
        self.hidden_size = sum(t.hidden_size for t in self.towers)
        self.num_prefix_tokens = 0
        for i, t in enumerate(self.towers):
            self.register_buffer(f"mean_{i}", torch.tensor(t.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std_{i}", torch.tensor(t.std).view(1, 3, 1, 1), persistent=False)

    @property
    def pad_colour(self) -> tuple:
        return self.towers[0].mean

    def blocks(self) -> nn.ModuleList:
        return nn.ModuleList(b for t in self.towers for b in t.blocks())

    def used_blocks(self) -> nn.ModuleList:
        return nn.ModuleList(b for t in self.towers for b in t.used_blocks())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = [
            t((pixels - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")) for i, t in enumerate(self.towers)
        ]  # each [B, P, Dv_i]
        return torch.cat(features, dim=-1)  # [B, P, sum Dv_i]
