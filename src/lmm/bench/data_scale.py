"""Benchmark: the bytes a rank reads to train, planning from shard indexes vs from the raw tar
stream, at W = 8, 64 and 512 ranks, on a mix665k-shaped shard set.

    lmm bench data-scale [--samples 20000 --workers 4 --ranks 8 64 512]   (make bench-data-scale)

The shard set is written once: 6% text-only conversations and 94% one-image samples, lengths
drawn as in lmm.bench.packing, COCO-like image sizes and files of ~100 KB (a real JPEG header,
padded), 1000 samples a shard, each with its index. Per W the global batch is LLaVA's 128
(per-device 128 / W), or W samples when W > 128. No process is started: rank r's DataLoader
worker w is the real TrainingStream with World(r, W) serving worker w's micro-batches
(`served`); every rank runs the same code, so ranks 0, W/2 and W − 1 stand for the others.

Measured, not modelled:
- bytes read per rank per step ÷ bytes of the samples that rank trains on (their tar members):
  with indexes, the catalog's byte-range reads (a counter in lmm.data.catalog) plus its index
  bytes (read once per rank, shown per step over an epoch); from the raw stream, the bytes the
  process read (/proc/self/io rchar) while one worker made its batches, × workers (every worker
  reads the same stream);
- bytes read before the first trained batch when resuming at 10%, 50%, 90% of an epoch ÷ one
  global step's sample bytes;
- planning time per step from the indexes (one core), and the straggler factor (Σ over steps
  of the slowest rank's tokens / the mean rank's).
Writes experiments/bench/data_scale.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from lmm.bench import checked_ratio, save_result
from lmm.bench.packing import IMAGE_TOKENS, draw_lengths
from lmm.data.catalog import Catalog
from lmm.data.index import index_root, read_arrays
from lmm.data.mixture import Source, TrainingStream, World
from lmm.data.sample import count_images

GROUP = 8  # data.length_group_size
IMAGE_SHAPES = [
    (640, 480),
    (480, 640),
    (640, 427),
    (500, 375),
    (1024, 768),
    (336, 336),
]  # (width, height), COCO/GQA/OCR-like
IMAGE_BYTES = 80_000  # median file size; lognormal(σ 0.6): mean ~96 KB, as mix665k's ~100 KB per image


def write_shards(root: Path, samples: int, seed: int = 0) -> list[str]:
    """The mix665k-shaped shard set with indexes; returns its shard paths."""
    rng = random.Random(seed)
    headers = {}
    for width, height in IMAGE_SHAPES:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (120, 110, 100)).save(buffer, format="JPEG", quality=50)
        headers[width, height] = buffer.getvalue()
    folder = root / "mix"
    folder.mkdir(parents=True)
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=1000, verbose=0, mtime=0.0) as writer:
        for i, (tokens, image) in enumerate(draw_lengths(samples, seed)):
            text = tokens - IMAGE_TOKENS if image else tokens
            record = {
                "id": str(i),
                "conversations": [
                    {"from": "human", "value": ("<image>\n" if image else "") + "q"},
                    {"from": "gpt", "value": "a" * max(1, 4 * text - 90)},
                ],
            }
            sample = {"__key__": f"{i:09d}", "json": json.dumps(record).encode()}
            if image:
                jpeg = headers[rng.choice(IMAGE_SHAPES)]
                size = max(len(jpeg), int(rng.lognormvariate(math.log(IMAGE_BYTES), 0.6)))
                sample["jpg"] = jpeg + b"\0" * (size - len(jpeg))  # a decoder stops at the end-of-image marker
            writer.write(sample)
    index_root(root)
    return sorted(str(p) for p in folder.glob("*.tar"))


def member_bytes(catalog: Catalog) -> np.ndarray:
    """Each catalog sample's member bytes (what training uses), in catalog order."""
    out = []
    for url in catalog.urls:
        a = read_arrays(url, ("member_start", "member_size"))
        sums = np.concatenate([[0], np.cumsum(a["member_size"])])
        out.append(sums[a["member_start"][1:]] - sums[a["member_start"][:-1]])
    return np.concatenate(out)


class PlanOnly:
    """What the raw plan asks of a processor: each raw sample's visual tokens."""

    @staticmethod
    def planned_image_tokens(sample: dict) -> int:
        return IMAGE_TOKENS * count_images(sample)


def stream(shards, catalog, world: World, per_device: int, resume: int = 0) -> TrainingStream:
    return TrainingStream(
        [Source("mix", shards, 1.0)],
        PlanOnly(),
        None,
        per_device,
        seed=0,
        group_size=GROUP,
        resume_batches=resume,
        world=world,
        catalog=catalog,
    )


def rchar() -> int:
    """Bytes this process has read through read() syscalls so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def served_counts(steps: int, workers: int) -> list[int]:
    """Micro-batches worker w serves among the first `steps` (accumulation 1: one per step)."""
    return [len(range(w, steps, workers)) for w in range(workers)]


def rank_reads(shards, world: World, per_device: int, steps: int, workers: int, sizes: np.ndarray) -> dict:
    """One rank, its workers one after the other: sample bytes read through the index, bytes trained."""
    catalog = Catalog([Source("mix", shards, 1.0)], IMAGE_TOKENS)
    plan = stream(shards, catalog, world, per_device)
    plan.epoch = 1  # as served() counts its first epoch
    trained = sum(int(sizes[i]) for batch in itertools.islice(plan.micro_batches(), steps) for i in batch)
    for w, count in enumerate(served_counts(steps, workers)):
        for _ in itertools.islice(stream(shards, catalog, world, per_device).served(w, workers), count):
            pass
    return {"read": catalog.bytes_read, "trained": trained, "index": catalog.index_bytes[0]}


def raw_reads(shards, world: World, per_device: int, steps: int, workers: int) -> int:
    """Bytes one worker of a rank reads from the raw stream to make its first batches, × workers."""
    before = rchar()
    for _ in itertools.islice(
        stream(shards, None, world, per_device).served(0, workers), served_counts(steps, workers)[0]
    ):
        pass
    return (rchar() - before) * workers


def step_tokens(catalog: Catalog, plan, steps: int) -> float:
    """The straggler factor of `steps` planned steps: Σ slowest rank's tokens / Σ mean rank's."""
    worst = mean = 0.0
    for step in itertools.islice(plan, steps):
        counts = [sum(catalog.length[i] for i in share) for share in step[0]]
        worst, mean = worst + max(counts), mean + sum(counts) / len(counts)
    return worst / mean


def resume_reads(shards, world: World, per_device: int, at: int, workers: int, sizes: np.ndarray, raw: bool) -> dict:
    """Bytes read before the first trained batch of a run resumed at step `at` (rank 0)."""
    if raw:
        before = rchar()
        next(stream(shards, None, world, per_device, resume=at).served(0, workers))
        return {"read": rchar() - before}
    start = time.perf_counter()
    catalog = Catalog([Source("mix", shards, 1.0)], IMAGE_TOKENS)  # a restarted rank builds its catalog again
    next(stream(shards, catalog, world, per_device, resume=at).served(0, workers))
    seconds = time.perf_counter() - start
    plan = stream(shards, catalog, world, per_device)
    plan.epoch = 1
    step = next(itertools.islice(plan.steps(), at, None))
    return {
        "read": catalog.bytes_read + catalog.index_bytes[0],
        "index": catalog.index_bytes[0],
        "global_step_bytes": sum(int(sizes[i]) for slot in step for share in slot for i in share),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default="experiments/bench/data_scale.json")
    args = parser.parse_args(argv)
    result = {
        "benchmark": "data_scale",
        "samples": args.samples,
        "workers": args.workers,
        "steps": args.steps,
        "per_W": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), args.samples)
        catalog = Catalog([Source("mix", shards, 1.0)], IMAGE_TOKENS)
        sizes = member_bytes(catalog)
        for ranks in args.ranks:
            per_device = max(1, args.global_batch // ranks)
            epoch = len(catalog) // (per_device * ranks)
            measured = [
                rank_reads(shards, World(r, ranks, 1), per_device, args.steps, args.workers, sizes)
                for r in sorted({0, ranks // 2, ranks - 1})
            ]
            read, trained = sum(m["read"] for m in measured), sum(m["trained"] for m in measured)
            index_per_step = measured[0]["index"] / epoch
            raw = raw_reads(shards, World(0, ranks, 1), per_device, args.steps, args.workers)
            plan = stream(shards, catalog, World(0, ranks, 1), per_device)
            plan.epoch = 1
            start = time.perf_counter()
            straggler = step_tokens(catalog, plan.steps(), 4 * args.steps)
            planning_ms = (time.perf_counter() - start) * 1000 / (4 * args.steps)
            row = {
                "per_device": per_device,
                "global_batch": per_device * ranks,
                "steps_per_epoch": epoch,
                "read_per_trained_index": round(
                    checked_ratio(
                        read + index_per_step * args.steps * len(measured), trained, {"trained": trained, "read": read}
                    ),
                    4,
                ),
                "read_per_trained_index_samples_only": round(read / trained, 4),
                "index_bytes_per_rank": measured[0]["index"],
                "read_per_trained_raw": round(raw / measured[0]["trained"], 2),
                "planning_ms_per_step": round(planning_ms, 3),
                "straggler_factor": round(straggler, 4),
            }
            result["per_W"][str(ranks)] = row
            print(
                f"W={ranks:4d} (per-device {per_device}, global {per_device * ranks}): bytes read / trained per rank: "
                f"index {row['read_per_trained_index']:.3f} (samples "
                f"{row['read_per_trained_index_samples_only']:.3f}), "
                f"raw stream {row['read_per_trained_raw']:.1f}; planning {planning_ms:.2f} ms/step; straggler "
                f"{straggler:.3f}"
            )
        ranks = args.ranks[0]
        per_device = max(1, args.global_batch // ranks)
        epoch = len(catalog) // (per_device * ranks)
        result["resume"] = {"W": ranks, "at": {}}
        for fraction in (0.1, 0.5, 0.9):
            at = int(fraction * epoch)
            index = resume_reads(shards, World(0, ranks, 1), per_device, at, args.workers, sizes, raw=False)
            raw = resume_reads(shards, World(0, ranks, 1), per_device, at, args.workers, sizes, raw=True)
            row = {
                "step": at,
                "index_read_per_global_step": round(index["read"] / index["global_step_bytes"], 4),
                "raw_read_per_global_step": round(raw["read"] / index["global_step_bytes"], 2),
                "index_bytes": index["index"],
                "index_seconds_to_first_batch": round(index["seconds"], 3),
            }
            result["resume"]["at"][str(fraction)] = row
            print(
                f"resume at {fraction:.0%} of an epoch (step {at}, W={ranks}): bytes before the first batch / one "
                "global step: "
                f"index {row['index_read_per_global_step']:.3f}, raw stream {row['raw_read_per_global_step']:.2f} "
                f"({row['index_seconds_to_first_batch']:.2f} s to the first batch)"
            )
    result["goals"] = {
        "read_per_trained_index": "<= 1.1 at every W",
        "index_read_per_global_step": "<= 1, flat in the step",
        "planning_ms_per_step": "<= 5 at W=512",
        "straggler_factor": "<= 1.05",
    }
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
