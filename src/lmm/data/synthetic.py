"""Generate the synthetic academic mixture (VQA, OCR, region, description) as WebDataset shards.

Deterministic from a seed: the same arguments write byte-identical shards. Layout:

    OUT/manifest.json          counts per split and source, shard lists, train-set baselines
    OUT/{pretrain,train,val,test}/shard-000000.tar
    OUT/tokenizer/             a tiny BPE tokenizer trained on the train texts

Each sample is `{"__key__", "png": bytes, "json": {"id", "source", "conversations", "qtypes"}}`,
LLaVA's format plus the question type of every human turn (used for per-type baselines).
Boxes are normalised to the *padded square* image, as LLaVA-1.5's region data is.

    python -m lmm.data.synthetic --out data/synthetic [--train 6000 --seed 0] [--placement free]
    python -m lmm.data.synthetic --out data/synthetic_table2 --preset table2   (make table2's mixture)
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw, ImageFont

from lmm.data.conversation import IMAGE_TOKEN
from lmm.data.shards import local_directory, read_manifest, write_manifest

GENERATOR_VERSION = 3
SHORT_ANSWER = "Answer the question using a single word or phrase."
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "
REGION_CAPTION_PROMPT = "Please provide a short description for this region: "
DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "What do you see in this image? Describe it thoroughly.",
    "Give a detailed description of the picture.",
)
CAPTION_PROMPTS = (
    "Provide a brief description of the given image.",
    "Describe the image concisely.",
    "Write a short caption for the image.",
)
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 8, "large": 11}  # half-extent in pixels
# Objects sit centred in 24px grid cells (as in Sort-of-CLEVR). Every canvas side is a multiple
# of the cell and padding to the 96px square adds whole cells, so after resizing to a 64px
# tower with 8px patches each cell is exactly 2x2 patches: a tiny random tower + LLM can learn
# shapes from consistent patch views within a few minutes on a CPU.
CELL = 24
CANVASES = ((96, 96), (96, 48), (48, 96))
BACKGROUND = (255, 255, 255)
WORDS = (
    "cat dog sun car bus map pen cup box hat key bed egg fox owl pig cow bee ant "
    "tree book door fish frog milk rain ship star wolf lamp moon rose kite"
).split()
SOURCES = ("vqa", "ocr", "region", "description")
# Beyond the default mixture (make table2): long-form answers to the VQA questions without a format
# prompt (LLaVA-Instruct's role beside VQAv2), and words rendered at half size, which a 64 px
# tower cannot read but a 128 px one can (the "higher resolution" row).
# `two_image`: questions about two images at once (several images per conversation).
EXTRA_SOURCES = ("conversation", "ocr_small", "two_image")
MULTI_IMAGE_SOURCES = ("two_image",)
WORD_SIZE, SMALL_WORD_SIZE = 22, 9
DEFAULT_WEIGHTS = {"vqa": 0.4, "ocr": 0.2, "region": 0.2, "description": 0.2}


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    cx: int
    cy: int

    @property
    def half(self) -> int:
        return SIZES[self.size]

    def box(self) -> tuple[int, int, int, int]:
        return (self.cx - self.half, self.cy - self.half, self.cx + self.half, self.cy + self.half)

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass
class Scene:
    width: int
    height: int
    objects: list[Obj]
    word: str | None = None
    word_colour: str | None = None
    word_size: int = WORD_SIZE


def _place_objects(rng: random.Random, width: int, height: int, n: int, placement: str = "grid") -> list[Obj]:
    """`n` objects of unique (shape, colour): centred in distinct grid cells, or (`free`) anywhere
    on the canvas without overlapping (a gap of at least 2 px between boxes)."""
    kinds = rng.sample([(s, c) for s in SHAPES for c in COLOURS], n)  # unique (shape, colour)
    if placement == "grid":  # (draws in the order of generator version 3: the same bytes)
        cells = rng.sample([(x, y) for x in range(width // CELL) for y in range(height // CELL)], n)
        centres = [(x * CELL + CELL // 2, y * CELL + CELL // 2) for x, y in cells]
        sizes = [rng.choice(tuple(SIZES)) for _ in kinds]
    elif placement == "free":
        sizes = [rng.choice(tuple(SIZES)) for _ in kinds]
        centres = _free_centres(rng, width, height, [SIZES[size] for size in sizes])
    else:
        raise ValueError(f"placement must be 'grid' or 'free', got {placement!r}")
    return [Obj(shape, colour, size, cx, cy) for (shape, colour), size, (cx, cy) in zip(kinds, sizes, centres)]


def _free_centres(rng: random.Random, width: int, height: int, halves: list[int], gap: int = 2) -> list[tuple[int, int]]:
    """Random centres for boxes of these half-extents, at least `gap` px apart. Early objects can
    leave no room for the last one (3 large objects on a 96x48 canvas), so a placement that gets
    stuck starts over; every canvas holds 3 large objects in a row, so this ends."""
    while True:
        centres: list[tuple[int, int]] = []
        for half in halves:
            for _ in range(50):
                cx, cy = rng.randint(half, width - 1 - half), rng.randint(half, height - 1 - half)
                if all(abs(cx - px) > half + other + gap or abs(cy - py) > half + other + gap
                       for (px, py), other in zip(centres, halves)):
                    centres.append((cx, cy))
                    break
            else:
                break
        if len(centres) == len(halves):
            return centres


def _draw(scene: Scene) -> bytes:
    """The scene as PNG bytes (what the shards hold)."""
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image."""
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        x1, y1, x2, y2 = o.box()
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((x1, y1, x2, y2), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x1, y1, x2, y2), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(o.cx, y1), (x2, y2), (x1, y2)], fill=fill)
        else:
            draw.polygon([(o.cx, y1), (x2, o.cy), (o.cx, y2), (x1, o.cy)], fill=fill)
    if scene.word:
        font = ImageFont.load_default(size=scene.word_size)
        draw.text((scene.width // 2, scene.height // 2), scene.word, fill=COLOURS[scene.word_colour], font=font, anchor="mm")
    return image


def normalised_box(box: tuple[int, int, int, int], width: int, height: int) -> list[float]:
    """Pixel box -> [x1, y1, x2, y2] in [0, 1] of the padded square image, 2 decimals."""
    side = max(width, height)
    dx, dy = (side - width) / 2, (side - height) / 2
    x1, y1, x2, y2 = box
    return [round((x1 + dx) / side, 2), round((y1 + dy) / side, 2), round((x2 + dx) / side, 2), round((y2 + dy) / side, 2)]


def format_box(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def _where(o: Obj, width: int, height: int) -> str:
    horizontal = "left" if o.cx < width / 3 else "right" if o.cx > 2 * width / 3 else "centre"
    vertical = "top" if o.cy < height / 3 else "bottom" if o.cy > 2 * height / 3 else "middle"
    return "in the centre" if (horizontal, vertical) == ("centre", "middle") else f"at the {vertical} {horizontal}"


def _vqa_questions(rng: random.Random, scene: Scene) -> list[tuple[str, str, str]]:
    """(question type, question, answer) candidates; each is unambiguous for the scene."""
    objs = scene.objects
    qs = [("count", "How many objects are in the image?", str(len(objs)))]
    for o in objs:
        qs.append(("colour", f"What color is the {o.shape}?", o.colour) if sum(p.shape == o.shape for p in objs) == 1 else None)
        qs.append(("shape", f"What shape is the {o.colour} object?", o.shape) if sum(p.colour == o.colour for p in objs) == 1 else None)
    if len(objs) >= 2:
        a, b = rng.sample(objs, 2)
        if abs(a.cx - b.cx) > 6:
            side = "left" if a.cx < b.cx else "right"
            qs.append(("position", f"Is the {a.colour} {a.shape} to the left or right of the {b.colour} {b.shape}?", side))
    return [q for q in qs if q is not None]


def _conversation(pairs: list[tuple[str, str]]) -> list[dict]:
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def describe_scene(scene: Scene) -> str:
    """What a caption model would say about the whole scene: its objects with their places, or its word."""
    if scene.word:
        return f"The word {scene.word} is written in {scene.word_colour}."
    return _description(scene)


def _description(scene: Scene) -> str:
    n = len(scene.objects)
    parts = [f"The image shows {n} object{'s' if n > 1 else ''} on a white background."]
    for o in scene.objects:
        parts.append(f"There is a {o.phrase()} {_where(o, scene.width, scene.height)}.")
    return " ".join(parts)


def _long_answer(scene: Scene, answer: str) -> str:
    """A chat model's answer to a short question: the answer in a sentence, then the scene."""
    return f"The answer is {answer}. {_description(scene)}"


def _caption(scene: Scene) -> str:
    names = [f"a {o.phrase()}" for o in scene.objects]
    return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]).capitalize() + "."


def make_sample(rng: random.Random, source: str, index: int, placement: str = "grid") -> tuple[Scene, dict]:
    """One image and its conversation from `source` (or a caption pair for 'caption')."""
    width, height = rng.choice(CANVASES)
    scene = Scene(width, height, _place_objects(rng, width, height, rng.randint(1, 3), placement))
    qtypes: list[str]
    if source == "vqa":
        candidates = _vqa_questions(rng, scene)
        chosen = rng.sample(candidates, min(len(candidates), rng.randint(2, 4)))
        pairs = [(f"{q}\n{SHORT_ANSWER}", a) for _, q, a in chosen]
        qtypes = [t for t, _, _ in chosen]
    elif source in ("ocr", "ocr_small"):
        scene.objects = []
        scene.word, scene.word_colour = rng.choice(WORDS), rng.choice(tuple(COLOURS))
        scene.word_size = SMALL_WORD_SIZE if source == "ocr_small" else WORD_SIZE
        pairs = [(f"What word is written in the image?\n{SHORT_ANSWER}", scene.word)]
        qtypes = ["word"]
        if rng.random() < 0.5:
            pairs.append((f"What color is the text?\n{SHORT_ANSWER}", scene.word_colour))
            qtypes.append("text_colour")
    elif source == "conversation":
        candidates = _vqa_questions(rng, scene)
        chosen = rng.sample(candidates, min(len(candidates), rng.randint(1, 3)))
        pairs = [(q, _long_answer(scene, a) if k == 0 else f"The answer is {a}.") for k, (_, q, a) in enumerate(chosen)]
        qtypes = [f"long_{t}" for t, _, _ in chosen]
    elif source == "region":
        pairs, qtypes = [], []
        for o in rng.sample(scene.objects, len(scene.objects)):
            box = format_box(normalised_box(o.box(), width, height))
            if rng.random() < 0.5:
                pairs.append((f"{GROUNDING_PROMPT}{o.phrase()}.", box))
                qtypes.append("grounding")
            else:
                pairs.append((f"{REGION_CAPTION_PROMPT}{box}", o.phrase()))
                qtypes.append("region_caption")
    elif source == "description":
        pairs, qtypes = [(rng.choice(DETAIL_PROMPTS), _description(scene))], ["description"]
    elif source == "caption":
        pairs, qtypes = [(rng.choice(CAPTION_PROMPTS), _caption(scene))], ["caption"]
    else:
        raise ValueError(f"unknown synthetic source {source!r}")
    record = {"id": f"{source}-{index:07d}", "source": source, "conversations": _conversation(pairs), "qtypes": qtypes}
    return scene, record


def make_two_image_sample(rng: random.Random, index: int, placement: str = "grid") -> tuple[list[Scene], dict]:
    """Two images and one question that needs both, the tags interleaved with text: which image
    has more objects of a colour (never a tie), or whether the one shape of the first image is also
    in the second (yes and no equally often)."""
    def scene(n: int) -> Scene:
        width, height = rng.choice(CANVASES)
        return Scene(width, height, _place_objects(rng, width, height, n, placement))

    if rng.random() < 0.5:
        colour = rng.choice(tuple(COLOURS))
        while True:
            first, second = scene(rng.randint(1, 3)), scene(rng.randint(1, 3))
            counts = [sum(o.colour == colour for o in s.objects) for s in (first, second)]
            if counts[0] != counts[1]:
                break
        qtype, question = "more_colour", f"Which image has more {colour} objects? Answer first or second."
        answer = "first" if counts[0] > counts[1] else "second"
    else:
        wanted = rng.random() < 0.5
        while True:
            first, second = scene(1), scene(rng.randint(1, 3))
            if any(o.shape == first.objects[0].shape for o in second.objects) == wanted:
                break
        qtype, question = "shape_in_both", "Is the shape in the first image also in the second? Answer yes or no."
        answer = "yes" if wanted else "no"
    turns = [{"from": "human", "value": f"Image 1: {IMAGE_TOKEN}\nImage 2: {IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": answer}]
    return [first, second], {"id": f"two_image-{index:07d}", "source": "two_image", "conversations": turns, "qtypes": [qtype]}


@dataclass
class GenerationConfig:
    seed: int = 0
    pretrain: int = 4000
    train: int = 6000
    val: int = 200
    test: int = 600
    shard_size: int = 1000
    placement: str = "grid"  # objects centred in 24 px cells (aligned to the tiny tower's patches), or "free"
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # sources of train and val
    test_weights: dict | None = None  # sources of test (None: `weights`)
    extra_train: dict = field(default_factory=dict)  # more training splits of `train` samples: {name: weights}
    version: int = GENERATOR_VERSION

    def splits(self) -> dict[str, tuple[int, dict | None]]:
        """Every split in generation order: (samples, source weights; None for the caption split)."""
        splits = {"pretrain": (self.pretrain, None), "train": (self.train, self.weights), "val": (self.val, self.weights),
                  "test": (self.test, self.test_weights or self.weights)}
        return splits | {name: (self.train, weights) for name, weights in self.extra_train.items()}


# The mixture of `make table2` (experiments/results/table2/): the default's sources plus long-form
# conversations and small words; `train_no_region` for the rows before "+ region data".
TABLE2_WEIGHTS = {"vqa": 0.3, "conversation": 0.15, "ocr": 0.1, "ocr_small": 0.15, "region": 0.15, "description": 0.15}
MULTI_IMAGE_WEIGHTS = {"vqa": 0.3, "ocr": 0.15, "region": 0.15, "description": 0.1, "two_image": 0.3}
PRESETS = {
    "default": GenerationConfig(),
    "table2": GenerationConfig(
        pretrain=0, test=400, weights=TABLE2_WEIGHTS,
        test_weights={k: w for k, w in TABLE2_WEIGHTS.items() if k != "conversation"},
        extra_train={"train_no_region": {k: w for k, w in TABLE2_WEIGHTS.items() if k != "region"}}),
    # Several images per conversation: the default's sources plus two-image questions;
    # `train_single_image` is the same mixture without them (single- vs multi-image training).
    "multi_image": GenerationConfig(
        pretrain=0, test=400, weights=MULTI_IMAGE_WEIGHTS,
        extra_train={"train_single_image": {k: w for k, w in MULTI_IMAGE_WEIGHTS.items() if k != "two_image"}}),
}


def _split_sources(n: int, weights: dict | None, rng: random.Random) -> list[str]:
    if weights is None:
        return ["caption"] * n
    unknown = set(weights) - set(SOURCES) - set(EXTRA_SOURCES)
    if unknown:
        raise ValueError(f"unknown synthetic sources {sorted(unknown)}; known: {list(SOURCES + EXTRA_SOURCES)}")
    return rng.choices(list(weights), weights=list(weights.values()), k=n)


def _baselines(train_records: list[dict]) -> dict:
    """Trivial baselines from the train split: majority answer per question type, mean box size."""
    answers: dict[str, Counter] = {}
    widths, heights = [], []
    for record in train_records:
        turns = record["conversations"]
        for k, qtype in enumerate(record["qtypes"]):
            answer = turns[2 * k + 1]["value"]
            answers.setdefault(qtype, Counter())[answer] += 1
            if qtype == "grounding":
                x1, y1, x2, y2 = json.loads(answer)
                widths.append(x2 - x1)
                heights.append(y2 - y1)
    majority = {q: c.most_common(1)[0][0] for q, c in answers.items() if q not in ("description", "grounding")}
    w, h = sum(widths) / max(len(widths), 1), sum(heights) / max(len(heights), 1)
    return {"majority_answer": majority, "centred_box": [round(0.5 - w / 2, 2), round(0.5 - h / 2, 2), round(0.5 + w / 2, 2), round(0.5 + h / 2, 2)]}


def generate(out: str | Path, config: GenerationConfig = GenerationConfig(), train_tokenizer: bool = True) -> dict:
    """Write all splits, the manifest and the tokenizer; skip if `out` already holds this config.

    Runs started side by side (a joblib or SLURM sweep on a fresh checkout) all find the mixture
    missing: one generates it, holding OUT/.generate.lock, and the others wait for it and then
    find it made, so that no process rewrites shards that another is reading. The manifest is
    written last, and whole: a mixture with a manifest is complete."""
    out = local_directory(out, "the synthetic mixture's output").resolve()  # absolute: never read as a pipe: or URL
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("config") == asdict(config):
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("config") == asdict(config):
            return manifest  # made by the process that held the lock first
        return _generate(out, config, train_tokenizer)


def _generate(out: Path, config: GenerationConfig, train_tokenizer: bool) -> dict:
    manifest = {"config": asdict(config), "counts": {}, "shards": {}}
    texts: list[str] = []
    train_records: list[dict] = []
    for split_index, (split, (n, weights)) in enumerate(config.splits().items()):
        rng = random.Random(config.seed * 1000 + split_index)  # splits are independent streams
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for old in split_dir.glob("shard-*.tar"):
            old.unlink()
        counts: Counter = Counter()
        pattern = str(split_dir / "shard-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=config.shard_size, verbose=0, mtime=0.0) as writer:
            for i, source in enumerate(_split_sources(n, weights, rng)):
                if source in MULTI_IMAGE_SOURCES:  # numbered entries, in the order of the tags
                    scenes, record = make_two_image_sample(rng, i, config.placement)
                    images = {f"{k}.png": _draw(scene) for k, scene in enumerate(scenes)}
                else:
                    scene, record = make_sample(rng, source, i, config.placement)
                    images = {"png": _draw(scene)}
                writer.write({"__key__": f"{split}-{i:07d}", **images, "json": record})
                counts[source] += 1
                if split in ("pretrain", "train"):  # (the extra splits draw from the same sources)
                    texts += [turn["value"] for turn in record["conversations"]]
                if split == "train":
                    train_records.append(record)
        manifest["counts"][split] = dict(sorted(counts.items()))
        manifest["shards"][split] = sorted(p.name for p in split_dir.glob("shard-*.tar"))
    manifest["baselines"] = _baselines(train_records)
    if train_tokenizer:
        from lmm.data.tokenizer import train_tokenizer as train

        train(texts, out / "tokenizer")
    write_manifest(out, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="default: the embedded default's mixture; table2: make table2's; multi_image: with two-image questions (see PRESETS)")
    for name in ("seed", "pretrain", "train", "val", "test", "shard_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default: the preset's ({getattr(GenerationConfig(), name)} for default)")
    parser.add_argument("--placement", choices=("grid", "free"))
    args = parser.parse_args(argv)
    given = {f: getattr(args, f) for f in ("seed", "pretrain", "train", "val", "test", "shard_size", "placement") if getattr(args, f) is not None}
    manifest = generate(args.out, replace(PRESETS[args.preset], **given))
    print(f"synthetic mixture in {args.out}:")
    for split, counts in manifest["counts"].items():
        print(f"  {split:15s} {sum(counts.values()):6d}  " + "  ".join(f"{s}={n}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
