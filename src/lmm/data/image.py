"""Image decoding and the tower's transform: safe decode to RGB, pad-to-square (or resize/crop,
or AnyRes tiles), normalise.

[Contract] With LLaVA's options (`alpha="drop"`, `exif="ignore"`, `aspect="pad"`) the pixels are
LLaVA-1.5's: `Image.open(f).convert("RGB")`, `expand2square` at the image's own resolution with
`tuple(int(x * 255) for x in image_mean)`, then CLIPImageProcessor's PIL bicubic resize of the
shortest edge and centre crop, rescale and normalise (tests/data/test_llava_pixels.py checks
them against transformers' CLIPImageProcessorPil). One deliberate difference: 16-bit and 32-bit
greyscale are rescaled to 8 bits, where PIL's convert would saturate them."""

from __future__ import annotations

import io
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps

from lmm.data.anyres import AnyRes

ASPECTS = ("pad", "resize", "crop", "anyres")
ALPHA = (
    "drop",
    "white",
)  # drop: LLaVA's convert("RGB") keeps the colour under transparency; white: composite over white
EXIF = (
    "ignore",
    "apply",
)  # ignore: LLaVA reads the stored pixels; apply: turn the image upright by its EXIF orientation
MAX_PIXELS = 8192 * 8192  # larger images are refused as decompression bombs
MAX_FILE_BYTES = 256 * 2**20  # an image file larger than this is refused before it is read
ORIENTATION_TAG = 0x0112  # EXIF orientation: 5-8 turn the image by 90°, swapping its sides


class ImageError(ValueError):
    """An image that cannot be used: unreadable, truncated, or too large to decode safely."""


def check_options(alpha: str, exif: str) -> None:
    if alpha not in ALPHA:
        raise ValueError(f"data.image.alpha must be one of {ALPHA}, got {alpha!r}")
    if exif not in EXIF:
        raise ValueError(f"data.image.exif must be one of {EXIF}, got {exif!r}")


def to_rgb(image: Image.Image, alpha: str = "drop") -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and 32-bit greyscale are rescaled (not clipped),
    palette/CMYK/greyscale are converted; transparency is dropped (LLaVA's `convert("RGB")`)
    or, with `alpha="white"`, composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if alpha == "drop":
        return image if image.mode == "RGB" else image.convert("RGB")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def read_image_file(path: str | Path) -> bytes:
    """An image file's bytes: only a regular file (not a device, FIFO or directory, which could
    hang or never end) of at most MAX_FILE_BYTES; ImageError otherwise."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path} is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageError(f"{path} is {info.st_size:,d} bytes, more than an image may be ({MAX_FILE_BYTES:,d})")
    with open(path, "rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, alpha: str = "drop", exif: str = "ignore") -> Image.Image:
    """Encoded bytes -> RGB image, or ImageError saying why not.

    The size is checked from the header before any pixel is decoded (decompression bombs are
    refused), truncated files fail instead of being silently padded; `exif="apply"` turns the
    image upright by its EXIF orientation (LLaVA does not); `alpha` as in to_rgb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Exception as e:
        raise ImageError(f"unreadable image ({type(e).__name__}: {e})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"decompression bomb refused: {width}x{height} pixels > max_pixels={max_pixels}")
    try:
        image.load()
    except Exception as e:
        raise ImageError(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    if exif == "apply":
        ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to rotate
    return to_rgb(image, alpha)


def header_size(data: bytes) -> tuple[int, int, bool]:
    """(height, width) of an encoded image as stored, and whether its EXIF orientation turns it
    by 90° (so that `exif="apply"` swaps the sides), from its header alone: no pixel is decoded.
    ImageError for one that cannot be opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
    except Exception as e:
        raise ImageError(f"unreadable image ({type(e).__name__}: {e})") from None
    try:
        turned = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    except Exception:  # a damaged EXIF block: the pixels are still read as stored
        turned = False
    return height, width, turned


def decoded_size(height: int, width: int, turned: bool, exif: str) -> tuple[int, int]:
    """(height, width) once decoded with the `exif` option, from header_size's answer."""
    return (width, height) if turned and exif == "apply" else (height, width)


def image_size(data: bytes, exif: str = "ignore") -> tuple[int, int]:
    """(height, width) of an encoded image as it will be decoded (with `exif="apply"`, EXIF
    rotation included), from its header alone. ImageError for one that cannot be opened."""
    return decoded_size(*header_size(data), exif)


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
    """The tower's normalisation mean as an 8-bit RGB colour, truncated as LLaVA's
    `tuple(int(x * 255) for x in image_mean)` does ((122, 116, 104) for CLIP)."""
    return tuple(int(m * 255) for m in mean)  # type: ignore[return-value]


class ImageTransform:
    """PIL image or encoded bytes -> normalised tensor [3, size, size].

    `fill` is the pad colour in [0, 1] (default: `mean`, as LLaVA pads with the tower's mean).
    `views()` gives what the tower reads of one image: that one view, or with aspect="anyres"
    (and its `anyres` layout) the overview and the tiles. `alpha` and `exif`: how an image is
    decoded (to_rgb, decode_image); the defaults are LLaVA's.
    """

    def __init__(
        self,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        aspect: str = "pad",
        fill: tuple[float, ...] | None = None,
        anyres: AnyRes | None = None,
        alpha: str = "drop",
        exif: str = "ignore",
    ):
        if aspect not in ASPECTS:
            raise ValueError(f"image_aspect must be one of {ASPECTS}, got {aspect!r}")
        if (aspect == "anyres") != (anyres is not None):
            raise ValueError("image_aspect=anyres needs its AnyRes layout (and only it takes one)")
        check_options(alpha, exif)
        self.size, self.mean, self.std, self.aspect, self.anyres = size, list(mean), list(std), aspect, anyres
        self.alpha, self.exif = alpha, exif
        self.fill = mean_colour(tuple(fill if fill is not None else mean))
        # (x / 255 - mean) / std in the order the tower's processor computes it (rescale, then normalise)
        self.mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self.std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def decode(self, image: Image.Image | bytes) -> Image.Image:
        return (
            decode_image(image, alpha=self.alpha, exif=self.exif)
            if isinstance(image, bytes)
            else to_rgb(image, self.alpha)
        )

    def size_of(self, data: bytes) -> tuple[int, int]:
        """(height, width) of encoded bytes as this transform will decode them, from the header."""
        return image_size(data, self.exif)

    def views(self, image: Image.Image | bytes) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image -> (its views [V, 3, S, S], its (height, width) once decoded)."""
        image = self.decode(image)
        size = (image.size[1], image.size[0])
        if self.anyres is None:
            return self(image)[None], size
        # Tiles are centred on black, as LLaVA-NeXT and HF's LlavaNextImageProcessor pad them.
        return TF.normalize(self.anyres.views(image, resize), self.mean, self.std), size

    def __call__(self, image: Image.Image | bytes) -> torch.Tensor:
        if self.anyres is not None:
            raise ValueError("image_aspect=anyres makes several views of an image: call views(), not the transform")
        image = self.decode(image)
        if self.aspect == "pad":  # LLaVA: expand2square at the image's resolution, then the tower's processor
            pixels = clip_resize_crop(pad_to_square(image, self.fill), self.size)
        elif self.aspect == "resize":
            pixels = pil_resize(image, (self.size, self.size))
        else:  # crop: the tower's own processor (CLIP: resize the short side, centre-crop)
            pixels = clip_resize_crop(image, self.size)
        return pixels.float().div_(255).sub_(self.mean_t).div_(self.std_t)  # [3, S, S], normalised


def pil_resize(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """RGB image -> [3, h, w] uint8, resized by PIL's bicubic filter, as CLIPImageProcessor
    does (transformers' resize: `PIL.Image.resize(..., reducing_gap=None)`)."""
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC, reducing_gap=None)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, h, w]


def clip_resize_crop(image: Image.Image, size: int) -> torch.Tensor:
    """CLIPImageProcessor(size={"shortest_edge": S}, crop_size=S): the short side to S (the long
    one to int(S * long / short)), bicubic, then the centre S x S crop. A square image is one resize."""
    width, height = image.size
    short, long = sorted((width, height))
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    pixels = pil_resize(image, (new_height, new_width))
    top, left = int((new_height - size) / 2), int((new_width - size) / 2)
    return pixels[:, top : top + size, left : left + size]


def resize(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """RGB image -> [3, h, w] floats in [0, 1], bicubic with antialiasing (AnyRes tiles).

    Resamples the uint8 pixels in channels-last layout, which takes
    torch's vectorised path: ~5x faster than resampling floats or PIL's own bicubic.
    """
    hwc = torch.from_numpy(np.array(image))  # [H, W, 3] uint8 (a writable copy of PIL's buffer)
    nchw = hwc.permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W], channels-last in memory
    out = F.interpolate(nchw, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].float().div_(255)  # [3, h, w]
