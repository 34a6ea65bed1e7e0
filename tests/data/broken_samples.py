"""The catalogue of broken (and merely unusual) samples, as raw shard samples."""

from __future__ import annotations

import io
import json

from PIL import Image

GOOD_TURNS = [{"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "red"}]


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _sample(key: str, image: bytes | None, turns=GOOD_TURNS, ext: str = "png", raw_json: bytes | None = None) -> dict:
    sample = {
        "__key__": key,
        "json": raw_json if raw_json is not None else json.dumps({"id": key, "conversations": turns}).encode(),
    }
    if image is not None:
        sample[ext] = image
    return sample


def catalogue() -> dict[str, tuple[dict, str | None]]:
    """name -> (raw sample, expected skip kind, or None when it must be used)."""
    noise = _encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    rotated = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6
    deep = Image.new("I;16", (8, 8), 40000)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    long_turns = GOOD_TURNS + [{"from": "human", "value": "Tell me more. " * 200}, {"from": "gpt", "value": "No."}]
    return {
        "truncated_jpeg": (_sample("truncated_jpeg", noise[: len(noise) * 2 // 3], ext="jpg"), "image"),
        "corrupt_bytes": (_sample("corrupt_bytes", b"\x89PNG\r\n\x1a\n garbage"), "image"),
        "image_without_tag": (
            _sample(
                "image_without_tag",
                _encode(Image.new("RGB", (8, 8))),
                [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "x"}],
            ),
            "conversation",
        ),
        "tag_without_image": (_sample("tag_without_image", None), "conversation"),
        "wrong_role_order": (
            _sample("wrong_role_order", _encode(Image.new("RGB", (8, 8))), list(reversed(GOOD_TURNS))),
            "conversation",
        ),
        "empty_turn": (
            _sample("empty_turn", _encode(Image.new("RGB", (8, 8))), [GOOD_TURNS[0], {"from": "gpt", "value": ""}]),
            "conversation",
        ),
        "first_exchange_too_long": (
            _sample(
                "first_exchange_too_long",
                _encode(Image.new("RGB", (8, 8))),
                [{"from": "human", "value": "<image>\n" + "why " * 600}, {"from": "gpt", "value": "x"}],
            ),
            "conversation",
        ),
        "decompression_bomb": (_sample("decompression_bomb", _encode(Image.new("1", (10_000, 10_000)))), "image"),
        "not_utf8_json": (
            _sample("not_utf8_json", _encode(Image.new("RGB", (8, 8))), raw_json=b'{"conversations": "\xff\xfe"}'),
            "json",
        ),
        "malformed_json": (
            _sample("malformed_json", _encode(Image.new("RGB", (8, 8))), raw_json=b'{"conversations": [}'),
            "json",
        ),
        # Unusual but valid: used, converted to RGB correctly.
        "grayscale": (_sample("grayscale", _encode(Image.new("L", (8, 8), 90))), None),
        "rgba": (_sample("rgba", _encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)))), None),
        "cmyk": (_sample("cmyk", _encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), ext="jpg"), None),
        "sixteen_bit": (_sample("sixteen_bit", _encode(deep)), None),
        "palette": (_sample("palette", _encode(palette)), None),
        "exif_rotated": (_sample("exif_rotated", _encode(rotated, "JPEG", exif=exif.tobytes()), ext="jpg"), None),
        "too_long_multi_turn": (_sample("too_long_multi_turn", _encode(Image.new("RGB", (8, 8))), long_turns), None),
    }
