"""Natural-looking test images: smooth gradients, hard-edged shapes and sensor noise, as JPEG."""

import io

import numpy as np
from PIL import Image


def natural_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([120 + 100 * np.sin(6 * x + seed), 90 + 80 * np.cos(5 * y), 60 + 120 * x * y], -1)
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        pixels[y0 : y0 + height // 3 + 1, x0 : x0 + width // 4 + 1] = rng.integers(0, 256, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
