"""Image transform for the vision tower: pad-to-square (or resize/crop), resize, normalise."""

from __future__ import annotations

import io

import torch
import torchvision.transforms.functional as TF
from PIL import Image

ASPECTS = ("pad", "resize", "crop")


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA's expand2square: centre the image on a square canvas filled with `fill`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The tower's normalisation mean as an 8-bit RGB colour (LLaVA pads with it)."""
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]


class ImageTransform:
    """PIL image or encoded bytes -> normalised tensor [3, size, size].

    `fill` is the pad colour in [0, 1] (default: `mean`, as LLaVA pads with the tower's mean).
    """

    def __init__(
        self, size: int, mean: tuple[float, ...], std: tuple[float, ...], aspect: str = "pad", fill: tuple[float, ...] | None = None
    ):
        if aspect not in ASPECTS:
            raise ValueError(f"image_aspect must be one of {ASPECTS}, got {aspect!r}")
        self.size, self.mean, self.std, self.aspect = size, list(mean), list(std), aspect
        self.fill = mean_colour(tuple(fill if fill is not None else mean))

    def __call__(self, image: Image.Image | bytes) -> torch.Tensor:
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        image = image.convert("RGB")
        if self.aspect == "pad":
            image = pad_to_square(image, self.fill)
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        elif self.aspect == "resize":
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        else:  # crop: resize the short side, then centre-crop (CLIP's own preprocessing)
            image = TF.center_crop(TF.resize(image, self.size, TF.InterpolationMode.BICUBIC), self.size)
        pixels = TF.to_tensor(image)  # [3, S, S] in [0, 1]
        return TF.normalize(pixels, self.mean, self.std)
