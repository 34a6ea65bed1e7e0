"""Benchmark: lmm's streaming pipeline vs a LLaVA-style map-style loader, same data, same transforms.

    lmm bench data [--images 512 --workers 2 --batches 24]     (also: make bench-data)

Both paths decode a COCO-sized JPEG, pad it to a square with the tower's mean colour, resize to
336 and normalise, render the vicuna_v1 template, tokenize and mask. The baseline is what
LLaVA's `LazySupervisedDataset` does: a JSON list in memory, `Image.open` from an image folder,
`expand2square`, transformers' PIL `CLIPImageProcessor` (CLIPImageProcessorPil in transformers 5:
the one LLaVA ran), shuffled map-style DataLoader. Both make the same pixels (tests/data/test_llava_pixels.py).
lmm reads
WebDataset shards written by `lmm.data.convert` through `TrainingStream`, planned from the shard
indexes (the default) and, for comparison, from the raw tar stream (data.plan=raw). Prints
samples/s of each, the ratios, and samples/s per worker; writes experiments/bench/data.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lmm.bench import checked_ratio, save_result
from lmm.data.catalog import Catalog
from lmm.data.collate import Collator
from lmm.data.conversation import encode
from lmm.data.convert import convert
from lmm.data.image import ImageTransform, mean_colour, pad_to_square
from lmm.data.mixture import Source, TrainingStream
from lmm.data.sample import Example, SampleProcessor
from lmm.data.shards import list_shards
from lmm.data.tokenizer import load_tokenizer

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE, IMAGE_TOKENS = 336, 576


def make_dataset(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """n COCO-sized JPEGs (640x480 / 480x640 noise + shapes) and a LLaVA-format JSON list."""
    rng = random.Random(seed)
    images, entries = root / "images", []
    (images / "coco/train2017").mkdir(parents=True)
    for i in range(n):
        size = rng.choice([(640, 480), (480, 640), (640, 427)])
        image = Image.effect_noise(size, 40).convert("RGB")
        name = f"coco/train2017/{i:012d}.jpg"
        image.save(images / name, format="JPEG", quality=90)
        turns = [
            {"from": "human", "value": "<image>\nWhat is in the picture? Describe it."},
            {
                "from": "gpt",
                "value": " ".join(
                    rng.choice(["a", "red", "bus", "on", "the", "street"]) for _ in range(rng.randint(5, 60))
                ),
            },
        ]
        entries.append({"id": str(i), "image": name, "conversations": turns})
    path = root / "llava.json"
    path.write_text(json.dumps(entries))
    return path, images


class LazySupervisedStyle(Dataset):
    """LLaVA's LazySupervisedDataset, reduced to its data path."""

    def __init__(self, json_path: Path, images: Path, tokenizer):
        from transformers import CLIPImageProcessorPil

        self.entries, self.images, self.tokenizer = json.loads(json_path.read_text()), images, tokenizer
        self.processor = CLIPImageProcessorPil(
            size={"shortest_edge": SIZE},
            crop_size={"height": SIZE, "width": SIZE},
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Example:
        entry = self.entries[i]
        image = Image.open(self.images / entry["image"]).convert("RGB")
        image = pad_to_square(image, mean_colour(CLIP_MEAN))
        pixels = self.processor.preprocess(image, return_tensors="pt")["pixel_values"]  # [1, 3, S, S]
        enc = encode(
            self.tokenizer, "vicuna_v1", entry["conversations"], IMAGE_TOKENS, self.image_token_id, max_length=2048
        )
        return Example(enc.input_ids, enc.labels, pixels)


def forever(loader):
    while True:  # a map-style loader ends with its epoch; start the next one
        yield from loader


def samples_per_second(loader, batches: int, warmup: int = 3) -> tuple[int, float]:
    """(samples loaded in the timed batches, seconds)."""
    iterator = forever(loader)
    for _ in range(warmup):
        next(iterator)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += next(iterator).input_ids.shape[0]
    return count, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--tokenizer", default="data/synthetic/tokenizer")
    parser.add_argument("--out", default="experiments/bench/data.json")
    args = parser.parse_args(argv)
    if not Path(args.tokenizer).exists():
        from lmm.data.synthetic import generate

        generate(Path(args.tokenizer).parent)
    tokenizer = load_tokenizer(args.tokenizer)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        json_path, images = make_dataset(Path(tmp), args.images)
        convert(json_path, images, Path(tmp) / "shards", workers=args.workers, shard_size=64, progress=False)
        transform = ImageTransform(SIZE, CLIP_MEAN, CLIP_STD, "pad")
        processor = SampleProcessor(tokenizer, "vicuna_v1", transform, IMAGE_TOKENS, max_length=2048)
        sources = [Source("llava", list_shards(Path(tmp) / "shards" / "llava_instruct"), 1.0)]
        loaders = {
            "llava": DataLoader(
                LazySupervisedStyle(json_path, images, tokenizer),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                collate_fn=Collator(tokenizer.pad_token_id),
                persistent_workers=args.workers > 0,
            )
        }
        for plan, catalog in (("lmm", Catalog(sources, IMAGE_TOKENS)), ("lmm_raw_plan", None)):
            stream = TrainingStream(
                sources,
                processor,
                Collator(tokenizer.pad_token_id),
                args.batch_size,
                seed=0,
                group_size=1,
                catalog=catalog,
            )
            loaders[plan] = DataLoader(
                stream, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0
            )
        # Alternate the three, twice, so a slow spell of the machine hits all alike.
        timed = {name: [0, 0.0] for name in loaders}
        for _ in range(2):
            for name, loader in loaders.items():
                count, seconds = samples_per_second(loader, args.batches)
                timed[name][0] += count
                timed[name][1] += seconds
    samples = {name: count for name, (count, _) in timed.items()}
    rate = {name: count / seconds for name, (count, seconds) in timed.items()}
    ours, baseline = rate["lmm"], rate["llava"]
    result = {
        "benchmark": "data",
        "lmm_samples_per_s": round(ours, 1),
        "lmm_raw_plan_samples_per_s": round(rate["lmm_raw_plan"], 1),
        "llava_map_style_samples_per_s": round(baseline, 1),
        "samples_timed": samples,  # each side's, over both rounds
        "ratio": round(checked_ratio(ours, baseline, {"lmm": samples["lmm"], "llava": samples["llava"]}), 3),
        "index_plan_vs_raw_plan": round(
            checked_ratio(ours, rate["lmm_raw_plan"], {"lmm": samples["lmm"], "lmm_raw_plan": samples["lmm_raw_plan"]}),
            3,
        ),
        "lmm_samples_per_s_per_worker": round(ours / max(1, args.workers), 1),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "image_size": SIZE,
    }
    print(
        f"lmm streaming      {ours:8.1f} samples/s  ({samples['lmm']} samples; "
        f"{result['lmm_samples_per_s_per_worker']} per worker, "
        f"{args.workers} workers; planned from the shard indexes)"
    )
    print(
        f"lmm, raw plan      {rate['lmm_raw_plan']:8.1f} samples/s  ({samples['lmm_raw_plan']} samples; planned from "
        "the tar bytes)"
    )
    print(f"LLaVA map-style    {baseline:8.1f} samples/s  ({samples['llava']} samples)")
    print(
        f"ratio              {result['ratio']:8.3f}x  (index plan / raw plan: {result['index_plan_vs_raw_plan']:.3f}x)"
    )
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
