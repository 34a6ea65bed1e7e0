"""Can a frozen tower read? A linear probe of rendered words, before any recipe run.

    lmm probe-words [--vision tiny_pretrained tiny_pretrained_128] [--sources ocr ocr_small]
                    [--train 2000] [--test 500] [--seed 0] [--out experiments/results/word_probe.json]

A resolution ablation can only show that a higher resolution helps reading if the text is
legible to the higher-resolution tower and not to the lower one. This measures it directly:
words rendered by the synthetic mixture's own sources (`ocr`: 22 px type, `ocr_small`: 9 px, on
its 48-96 px canvases), transformed exactly as training transforms them, encoded by the frozen
tower (its selected layer's patch features, flattened), and a linear classifier over the 33
words trained on `--train` images and scored on `--test` others (chance 1/33). Images come from
seeds of their own, never the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from lmm.build.model import build_tower
from lmm.core.config import CONF, register_resolvers
from lmm.data.image import ImageTransform
from lmm.data.synthetic import WORDS, make_sample, render

PROBE_STEPS, PROBE_LR, PROBE_DECAY = 300, 1e-3, 0.1


def word_images(source: str, n: int, seed: int) -> list[tuple]:
    """(image, word index) pairs from a word source of the synthetic mixture."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene, _ = make_sample(rng, source, i)
        out.append((render(scene), WORDS.index(scene.word)))
    return out


@torch.no_grad()
def features(tower, images: list[tuple], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen tower's patch features, flattened [N, P·D], and the labels [N]."""
    transform = ImageTransform(tower.image_size, tower.mean, tower.std, tower.image_aspect, fill=tower.pad_colour)
    pixels = torch.stack([transform(image) for image, _ in images])
    encoded = torch.cat([tower(pixels[i : i + batch]).flatten(1) for i in range(0, len(pixels), batch)])
    return encoded, torch.tensor([label for _, label in images])


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], seed: int) -> float:
    """Test accuracy of a softmax classifier on standardised features (full-batch AdamW)."""
    (x, y), (x_test, y_test) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-5
    torch.manual_seed(seed)
    probe = nn.Linear(x.shape[1], len(WORDS))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=PROBE_LR, weight_decay=PROBE_DECAY)
    for _ in range(PROBE_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe((x - mean) / std), y).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe((x_test - mean) / std).argmax(1) == y_test).float().mean())


def vision_config(name: str):
    """conf/vision/<name>.yaml as run.py composes it."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"vision={name}", "run_dir=/tmp/lmm-word-probe"]).vision


def probe_words(visions: list[str], sources: list[str], train: int, test: int, seed: int) -> list[dict]:
    rows = []
    data = {s: (word_images(s, train, seed + 1), word_images(s, test, seed + 2)) for s in sources}
    for name in visions:
        tower = build_tower(vision_config(name)).eval()
        for source, (train_images, test_images) in data.items():
            accuracy = linear_probe(features(tower, train_images), features(tower, test_images), seed)
            rows.append(
                {
                    "vision": name,
                    "image_size": tower.image_size,
                    "source": source,
                    "accuracy": round(accuracy, 4),
                    "chance": round(1 / len(WORDS), 4),
                    "train": train,
                    "test": test,
                }
            )
            print(f"{name:24s} {tower.image_size:4d} px  {source:10s}  {accuracy:.3f}  (chance {1 / len(WORDS):.3f})")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vision", nargs="+", default=["tiny_pretrained", "tiny_pretrained_128"])
    parser.add_argument("--sources", nargs="+", default=["ocr", "ocr_small"], choices=["ocr", "ocr_small"])
    parser.add_argument("--train", type=int, default=2000, help="probe training images per source")
    parser.add_argument("--test", type=int, default=500, help="held-out images per source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = probe_words(args.vision, args.sources, args.train, args.test, args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"[lmm] word probe written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
