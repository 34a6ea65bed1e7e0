"""Benchmark: how long the slowest rank makes every other rank wait, per-rank batch plans
against lmm's global plan, on mix665k-shaped lengths.

    lmm bench straggler [--ranks 8] [--batch-size 16] [--steps 400]   (part of make bench)

A data-parallel step lasts as long as its slowest rank. The straggler factor is
Σ_steps max over ranks of tokens / Σ_steps mean over ranks of tokens: 1.0 means no rank ever
waits; 1.3 means 30% of the cluster's time is spent waiting. Per-rank plans are what lmm did
before (and what a per-rank sampler gives): each rank groups its own stream by modality and
length (LLaVA's pools of batch × 8, sorted, shuffled), so in one step rank 0 may hold short VQA
answers and rank 5 long conversations — or a text-only batch while the others hold images,
which under FSDP/DDP is a collective mismatch (counted as `mixed_modality_steps`). The global
plan (lmm.data.mixture.plan_steps) groups the whole world's step by modality and length and
deals it out with balanced tokens. Lengths as in lmm.bench.packing: 94% image conversations
(576 image tokens + text), 6% text-only ShareGPT, capped at 2048. No model runs: this is about
the plan, so it is exact and takes seconds. Writes experiments/bench/straggler.json.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator

from lmm.bench import save_result
from lmm.bench.packing import IMAGE_TOKENS, draw_lengths
from lmm.data.mixture import World, approximate_length, has_image, plan_steps

GROUP = 8  # LLaVA's megabatch multiple (lmm's data.length_group_size)


def raw_samples(seed: int) -> Iterator[dict]:
    """An endless stream of raw samples whose approximate length is drawn like mix665k's."""
    batch = 0
    while True:
        for n, image in draw_lengths(4096, seed=seed * 100_003 + batch):
            text = n - IMAGE_TOKENS if image else n
            yield {"json": b"x" * (4 * text), **({"png": b""} if image else {})}
        batch += 1


def per_rank_batches(samples: Iterator[dict], batch_size: int, rng: random.Random) -> Iterator[list[dict]]:
    """One rank's own plan: per modality, pools of batch × GROUP sorted by length, cut, shuffled."""
    pools: dict[bool, list[dict]] = {True: [], False: []}
    for sample in samples:
        pool = pools[has_image(sample)]
        pool.append(sample)
        if len(pool) == batch_size * GROUP:
            pool.sort(key=tokens)
            batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
            rng.shuffle(batches)
            yield from batches
            pool.clear()


def tokens(sample: dict) -> int:
    return approximate_length(sample, IMAGE_TOKENS)


def factor(steps: list[list[list[dict]]]) -> tuple[float, int]:
    """(Σ max / Σ mean of tokens per rank, steps whose ranks disagree on having images)."""
    worst = mean = 0.0
    mixed = 0
    for shares in steps:
        counts = [sum(map(tokens, share)) for share in shares]
        worst, mean = worst + max(counts), mean + sum(counts) / len(counts)
        mixed += len({has_image(share[0]) for share in shares}) > 1
    return worst / mean, mixed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="experiments/bench/straggler.json")
    args = parser.parse_args(argv)

    streams = [
        per_rank_batches(raw_samples(seed=rank), args.batch_size, random.Random(rank)) for rank in range(args.ranks)
    ]
    per_rank = [[next(stream) for stream in streams] for _ in range(args.steps)]
    planned = plan_steps(raw_samples(seed=0), args.batch_size, World(0, args.ranks, 1), GROUP, random.Random(0), tokens)
    global_plan = [next(planned)[0] for _ in range(args.steps)]  # accumulation 1: slot 0 holds every rank's share
    (old, old_mixed), (new, new_mixed) = factor(per_rank), factor(global_plan)
    result = {
        "benchmark": "straggler",
        "ranks": args.ranks,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "straggler_factor": {"per_rank_plans": round(old, 4), "global_plan": round(new, 4)},
        "mixed_modality_steps": {"per_rank_plans": old_mixed, "global_plan": new_mixed},
        "goal": "global_plan <= 1.05",
    }
    result = save_result(result, args.out, argv)
    print(
        f"straggler factor over {args.steps} steps, {args.ranks} ranks × {args.batch_size}: per-rank plans {old:.3f} "
        f"({old_mixed} steps with ranks on different modalities), global plan {new:.3f} ({new_mixed})"
    )
    return result


if __name__ == "__main__":
    main()
