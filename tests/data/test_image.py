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
    assert mean_colour(MEAN) == (122, 116, 104)  # LLaVA's int(x * 255): truncated, not rounded
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((39, 39)) == (122, 116, 104)
    assert square.getpixel((0, 10)) == (255, 0, 0) and square.getpixel((39, 29)) == (255, 0, 0)
    assert square.getpixel((20, 9)) == (122, 116, 104) and square.getpixel((20, 30)) == (122, 116, 104)
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
    white = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)])
    torch.testing.assert_close(pixels[:, 8, 8], white, atol=1e-3, rtol=0)
    if aspect == "pad":  # the padded band is the mean colour, i.e. ~0 after normalisation
        assert pixels[:, 0, 8].abs().max() < 0.02


def test_unknown_aspect():
    with pytest.raises(ValueError, match="image_aspect"):
        ImageTransform(16, MEAN, STD, "stretch")


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_decode_converts_every_mode_to_rgb():
    from lmm.data.image import decode_image

    grey = decode_image(encoded(Image.new("L", (4, 4), 100)))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (100, 100, 100)
    clear = encoded(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert decode_image(clear).getpixel((0, 0)) == (
        255,
        0,
        0,
    )  # LLaVA's convert("RGB"): the colour under the transparency
    assert decode_image(clear, alpha="white").getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white
    half = decode_image(encoded(Image.new("RGBA", (4, 4), (0, 0, 0, 128))), alpha="white")
    assert 120 <= half.getpixel((0, 0))[0] <= 135
    cmyk = decode_image(encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60
    deep = Image.new("I;16", (4, 4))
    deep.putpixel((0, 0), 65535)
    deep.putpixel((1, 0), 32768)
    sixteen = decode_image(encoded(deep))
    assert sixteen.getpixel((0, 0)) == (255, 255, 255) and 125 <= sixteen.getpixel((1, 0))[0] <= 130
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(encoded(palette)).getpixel((0, 0)) == (10, 200, 30)


def test_exif_rotation_is_applied_on_request():
    from lmm.data.image import decode_image, image_size

    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    data = encoded(image, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (40, 20) and image_size(data) == (20, 40)  # LLaVA reads the stored pixels
    assert decode_image(data, exif="apply").size == (20, 40) and image_size(data, "apply") == (40, 20)


def test_unknown_image_options_are_refused():
    with pytest.raises(ValueError, match="data.image.alpha must be one of"):
        ImageTransform(16, MEAN, STD, alpha="black")
    with pytest.raises(ValueError, match="data.image.exif must be one of"):
        ImageTransform(16, MEAN, STD, exif="rotate")


def test_bad_images_raise_image_error():
    from lmm.data.image import ImageError, decode_image

    jpeg = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(jpeg[: len(jpeg) * 2 // 3])
    with pytest.raises(ImageError, match="unreadable"):
        decode_image(b"definitely not an image")
    with pytest.raises(ImageError, match="decompression bomb refused: 64x64"):
        decode_image(jpeg, max_pixels=1000)
