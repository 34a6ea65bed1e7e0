"""Schema-exact miniatures of llava_v1_5_mix665k.json and blip_laion_cc_sbu_558k.json, with
generated images in the official folder layout, plus a catalogue of broken entries: what the
tests and `make gpu-check` train on when the real files are not at hand. Like the real mixture
they hold text-only ShareGPT conversations and multi-turn conversations; `build_multi_image`
adds LLaVA-NeXT's multi-image entries."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."
CAPTION = "Provide a one-sentence caption for the provided image."


def _jpeg(path: Path, colour=(200, 30, 30), size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG")


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def build_mix665k(root: Path) -> tuple[Path, Path, dict[str, int], dict[str, str]]:
    """Returns (json path, image root, expected counts per source, expected rejection reasons by id)."""
    images = root / "images"
    entries, expected = [], {}

    def add(source: str, entry: dict, image: str | None = None) -> None:
        if image:
            _jpeg(images / image)
            entry["image"] = image
        entries.append(entry)
        expected[source] = expected.get(source, 0) + 1

    for i in range(3):
        add(
            "llava_instruct",
            {
                "id": f"{i:012d}",
                "conversations": _turns(
                    ("What is unusual about this image?\n<image>", "A man irons clothes on a taxi."),
                    ("Why?", "It is a stunt."),
                ),
            },
            f"coco/train2017/{i:012d}.jpg",
        )
        add(
            "vqav2_okvqa",
            {
                "id": f"v{i}",
                "conversations": _turns(
                    (f"<image>\nWhat color is the bus?\n{SHORT}", "red"), (f"How many people?\n{SHORT}", "2")
                ),
            },
            f"coco/train2017/{100 + i:012d}.jpg",
        )
        add(
            "gqa",
            {"id": f"g{i}", "conversations": _turns((f"<image>\nIs the sky cloudy?\n{SHORT}", "no"))},
            f"gqa/images/n{i}.jpg",
        )
        add(
            "ocrvqa",
            {"id": f"o{i}", "conversations": _turns((f"<image>\nWho wrote this book?\n{SHORT}", "Jane Austen"))},
            f"ocr_vqa/images/{i}.jpg",
        )
        add(
            "aokvqa",
            {
                "id": f"a{i}",
                "conversations": _turns((f"<image>\nWhat is the man doing?\nA. running\nB. sitting\n{CHOICE}", "B")),
            },
            f"coco/train2017/{200 + i:012d}.jpg",
        )
        add(
            "textcaps",
            {"id": f"t{i}", "conversations": _turns((f"<image>\n{CAPTION}", "A bottle of Coca-Cola on a table."))},
            f"textvqa/train_images/{i:016x}.jpg",
        )
        add(
            "refcoco",
            {
                "id": f"r{i}",
                "conversations": _turns(
                    (
                        "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: "
                        "man in red.",
                        "[0.12, 0.30, 0.45, 0.98]",
                    ),
                    ("Please provide a short description for this region: [0.50, 0.10, 0.90, 0.60]", "white car"),
                ),
            },
            f"coco/train2017/{300 + i:012d}.jpg",
        )
        add(
            "vg",
            {
                "id": f"vg{i}",
                "conversations": _turns(
                    ("<image>\nPlease provide a short description for this region: [0.10, 0.20, 0.30, 0.40]", "a tree")
                ),
            },
            f"vg/VG_100K{'_2' if i % 2 else ''}/{i}.jpg",
        )
        add("sharegpt", {"id": f"s{i}", "conversations": _turns(("Write a haiku about GPUs.", "Silicon rivers / ..."))})
    # The broken-entry catalogue: each is rejected with its reason, never converted.
    broken = {
        "missing-file": (
            {
                "id": "missing-file",
                "image": "coco/train2017/does_not_exist.jpg",
                "conversations": _turns(("<image>\nQ?", "A")),
            },
            "image: missing file",
        ),
        "no-tag": (
            {
                "id": "no-tag",
                "image": "coco/train2017/000000000000.jpg",
                "conversations": _turns(("What is this?", "A cat")),
            },
            "conversation: 1 image(s) but 0 <image> tags",
        ),
        "tag-no-image": (
            {"id": "tag-no-image", "conversations": _turns(("<image>\nWhat is this?", "A cat"))},
            "conversation: <image> tag but no image",
        ),
        "wrong-roles": (
            {
                "id": "wrong-roles",
                "image": "gqa/images/n0.jpg",
                "conversations": [{"from": "gpt", "value": "<image>\nhi"}, {"from": "human", "value": "x"}],
            },
            "conversation: turn 0 should be from 'human'",
        ),
        "empty-turn": (
            {"id": "empty-turn", "image": "gqa/images/n1.jpg", "conversations": _turns(("<image>\nQ?", "  "))},
            "conversation: turn 1 is empty",
        ),
        "unknown-folder": (
            {"id": "unknown-folder", "image": "flickr/1.jpg", "conversations": _turns(("<image>\nQ?", "A"))},
            "source: image path 'flickr/1.jpg' matches no known",
        ),
        "corrupt-jpeg": (
            {
                "id": "corrupt-jpeg",
                "image": "coco/train2017/corrupt.jpg",
                "conversations": _turns(("<image>\nQ?", "A")),
            },
            "image: ",
        ),
    }
    (images / "coco/train2017/corrupt.jpg").write_bytes((images / "coco/train2017/000000000000.jpg").read_bytes()[:200])
    entries += [entry for entry, _ in broken.values()]
    path = root / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(entries))
    return path, images, expected, {k: reason for k, (_, reason) in broken.items()}


def build_multi_image(root: Path, n: int = 6) -> tuple[Path, Path]:
    """The mix665k miniature plus LLaVA-NeXT / M4-Instruct-style entries with `"image": [..]`
    lists (2 or 3 images of differing sizes, tags interleaved with text or all first), and one whose tags and images
    disagree (rejected). Converted, the lists form the `multi_image` source."""
    json_path, images, _, _ = build_mix665k(root)
    entries = json.loads(json_path.read_text())
    for i in range(n):
        paths = [f"m4_instruct/scene{i}/{k}.jpg" for k in range(2 + i % 2)]
        for k, path in enumerate(paths):
            # Sizes differ (wide, tall, square), as in the real lists: AnyRes gives each its own grid and token count.
            _jpeg(
                images / path, colour=(60 * k, 40 * i, 200 - 60 * k), size=(40 + 50 * ((i + k) % 3), 30 + 40 * (i % 2))
            )
        question = (
            "".join(f"Image {k + 1}: <image>\n" for k in range(len(paths)))
            if i % 2 == 0
            else "<image>" * len(paths) + "\n"
        )
        entries.append(
            {
                "id": f"m4-{i}",
                "image": paths,
                "conversations": _turns(
                    (question + "What differs between the images?", "The colours."), ("Which is bluest?", "The first.")
                ),
            }
        )
    entries.append(
        {
            "id": "m4-mismatch",
            "image": ["m4_instruct/scene0/0.jpg", "m4_instruct/scene0/1.jpg"],
            "conversations": _turns(("<image>\nOnly one tag for two images.", "?")),
        }
    )
    path = root / "multi_image.json"
    path.write_text(json.dumps(entries))
    return path, images


def build_pretrain558k(root: Path, n: int = 6) -> tuple[Path, Path]:
    images = root / "pretrain_images"
    entries = []
    for i in range(n):
        name = f"00453/00453{i:04d}.jpg"
        _jpeg(images / name, colour=(i * 40, 100, 200))
        entries.append(
            {
                "id": f"00453{i:04d}",
                "image": name,
                "conversations": _turns(
                    ("Render a clear and concise summary of the photo.\n<image>", f"a photo number {i}")
                ),
            }
        )
    path = root / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps(entries))
    return path, images


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
