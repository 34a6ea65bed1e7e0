"""image_aspect=pad pixels are LLaVA-1.5's: expand2square (copied from haotian-liu/LLaVA) then
transformers' CLIPImageProcessorPil, and LlavaImageProcessorPil(do_pad=True), on natural-looking
images of many shapes at 64 and 336 px; crop is CLIPImageProcessorPil alone."""

import io

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaImageProcessorPil

from lmm.data.image import ImageTransform
from tests.llava_reference import expand2square
from tests.natural_images import natural_jpeg

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SHAPES = [(40, 30), (30, 40), (17, 64), (333, 500), (500, 333), (640, 480), (97, 101), (100, 100), (1, 50), (1200, 90)]


def processor(cls, size: int, **kwargs):
    return cls(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        **kwargs,
    )


def in_pixel_units(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of normalised tensors [3, S, S] back in [0, 1] units (× std)."""
    return (a - b).abs() * torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.mark.parametrize("size", [64, 336])
def test_pad_pixels_are_llavas(size):
    ours = ImageTransform(size, CLIP_MEAN, CLIP_STD, "pad")
    clip, llava = processor(CLIPImageProcessorPil, size), processor(LlavaImageProcessorPil, size, do_pad=True)
    for seed, (width, height) in enumerate(SHAPES):
        data = natural_jpeg(width, height, seed)
        image = Image.open(io.BytesIO(data)).convert("RGB")  # LazySupervisedDataset
        padded = expand2square(image, tuple(int(x * 255) for x in clip.image_mean))
        reference = clip.preprocess(padded, return_tensors="pt")["pixel_values"][0]
        pixels = ours(data)
        diff = in_pixel_units(pixels, reference)
        # The tolerance (mean ≤ 0.5/255, ≤ 1% beyond 2/255); the pipelines agree to float rounding.
        assert diff.mean() <= 0.5 / 255 and (diff > 2 / 255).float().mean() <= 0.01
        assert diff.max() < 1e-5, (width, height, diff.max())
        via_llava = llava.preprocess(image, return_tensors="pt")["pixel_values"][0]
        assert in_pixel_units(pixels, via_llava).max() < 1e-5


@pytest.mark.parametrize("size", [64, 336])
def test_crop_pixels_are_clip_processors(size):
    ours = ImageTransform(size, CLIP_MEAN, CLIP_STD, "crop")
    clip = processor(CLIPImageProcessorPil, size)
    for seed, (width, height) in enumerate(SHAPES):
        data = natural_jpeg(width, height, seed)
        reference = clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert in_pixel_units(ours(data), reference).max() < 1e-5, (width, height)


def test_transparent_and_rotated_images_as_llava_reads_them():
    """LLaVA's Image.open(f).convert("RGB"): alpha dropped (the colour under it shows), EXIF ignored."""
    rgba = Image.new("RGBA", (30, 20), (200, 10, 10, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    clip = processor(CLIPImageProcessorPil, 64)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    reference = clip.preprocess(expand2square(image, (122, 116, 104)), return_tensors="pt")["pixel_values"][0]
    assert in_pixel_units(ImageTransform(64, CLIP_MEAN, CLIP_STD)(buffer.getvalue()), reference).max() < 1e-5
    white = ImageTransform(64, CLIP_MEAN, CLIP_STD, alpha="white")(buffer.getvalue())
    assert (
        in_pixel_units(
            white[:, 32:33, 32:33], ImageTransform(64, CLIP_MEAN, CLIP_STD)(buffer.getvalue())[:, 32:33, 32:33]
        ).min()
        > 0.1
    )
