"""pad_to_square is LLaVA's expand2square; the transform yields normalised [3, S, S] tensors."""

import io

import pytest
import torch
from PIL import Image

from lmm.data.image import ImageTransform, mean_colour, pad_to_square

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def test_pad_to_square_centres_on_mean_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = pad_to_square(image, mean_colour(MEAN))
    assert square.size == (40, 40)
    assert mean_colour(MEAN) == (123, 117, 104)
    assert square.getpixel((0, 0)) == (123, 117, 104) and square.getpixel((39, 39)) == (123, 117, 104)
    assert square.getpixel((0, 10)) == (255, 0, 0) and square.getpixel((39, 29)) == (255, 0, 0)
    assert square.getpixel((20, 9)) == (123, 117, 104) and square.getpixel((20, 30)) == (123, 117, 104)
    tall = pad_to_square(Image.new("RGB", (10, 30), (0, 0, 255)), (1, 2, 3))
    assert tall.size == (30, 30) and tall.getpixel((9, 15)) == (1, 2, 3) and tall.getpixel((10, 15)) == (0, 0, 255)


def test_square_image_unchanged():
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    assert pad_to_square(image, (0, 0, 0)) is image


@pytest.mark.parametrize("aspect", ["pad", "resize", "crop"])
def test_transform_shape_and_normalisation(aspect):
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (255, 255, 255)).save(buffer, format="PNG")
    pixels = ImageTransform(16, MEAN, STD, aspect)(buffer.getvalue())
    assert pixels.shape == (3, 16, 16)
    white = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)])
    torch.testing.assert_close(pixels[:, 8, 8], white, atol=1e-3, rtol=0)
    if aspect == "pad":  # the padded band is the mean colour, i.e. ~0 after normalisation
        assert pixels[:, 0, 8].abs().max() < 0.02


def test_unknown_aspect():
    with pytest.raises(ValueError, match="image_aspect"):
        ImageTransform(16, MEAN, STD, "stretch")
