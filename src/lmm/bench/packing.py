"""Benchmark: real (non-pad) tokens/s of packed rows against LLaVA's modality-and-length-grouped
padded batches, on a length distribution shaped like mix665k, same samples, same model.

    python -m lmm.bench.packing [--samples 192] [--repeats 3]      (also: make bench-packing)

Lengths: 94% image conversations, 576 image tokens + text drawn log-normally (median 120 tokens),
6% ShareGPT-like text-only conversations (median 600), everything capped at 2048 — the shape of
llava_v1_5_mix665k (40K of its 665K samples are ShareGPT). Batches of 16 samples are formed as
LLaVA's `group_by_modality_length` does (pools of 16 × 8 samples of one modality, sorted by length,
cut into batches), then collated by lmm's Collator padded, or packed (data.packing=true) into rows
of 2048. Timed: forward + backward of a small random Llama (image tokens stand in as tokens:
the vision work per image is the same in both). Writes experiments/bench/packing.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.bench import machine, save_result
from lmm.data.collate import Collator
from lmm.data.sample import Example

MAX_LENGTH, IMAGE_TOKENS, BATCH, GROUP = 2048, 576, 16, 8


def draw_lengths(n: int, seed: int = 0) -> list[tuple[int, bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.06:
            out.append((min(MAX_LENGTH, max(16, int(rng.lognormvariate(6.4, 0.8)))), False))
        else:
            out.append((min(MAX_LENGTH, IMAGE_TOKENS + max(8, int(rng.lognormvariate(4.8, 0.9)))), True))
    return out


def examples(lengths: list[tuple[int, bool]], vocab: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, has_image in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        prompt = (IMAGE_TOKENS if has_image else 0) + 16  # the prompt is not a target
        out.append(Example(ids, [-100] * min(prompt, n - 1) + ids[min(prompt, n - 1):], None, {"image": has_image}))
    return out


def grouped_batches(items: list[Example], seed: int = 0) -> list[list[Example]]:
    """LLaVA's group_by_modality_length: per modality, shuffled pools of BATCH × GROUP sorted by length."""
    rng = random.Random(seed)
    batches = []
    for modality in (True, False):
        pool = [x for x in items if x.meta["image"] == modality]
        rng.shuffle(pool)
        for start in range(0, len(pool), BATCH * GROUP):
            chunk = sorted(pool[start : start + BATCH * GROUP], key=lambda x: len(x.input_ids), reverse=True)
            batches += [chunk[i : i + BATCH] for i in range(0, len(chunk), BATCH)]
    rng.shuffle(batches)
    return batches


def run(model, batches: list[dict]) -> float:
    """Seconds for forward + backward over every batch."""
    start = time.perf_counter()
    for batch in batches:
        packed = "position_ids" in batch
        out = model(input_ids=batch["input_ids"], attention_mask=None if packed else batch["attention_mask"],
                    position_ids=batch.get("position_ids"), labels=batch["labels"], use_cache=False)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="experiments/bench/packing.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=1024, max_position_embeddings=MAX_LENGTH, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    items = examples(draw_lengths(args.samples), config.vocab_size)
    plan = grouped_batches(items)
    padded = [Collator(0)(b) for b in plan]
    packed = [Collator(0, pack_length=MAX_LENGTH)(b) for b in plan]
    real = sum(len(x.input_ids) for x in items)
    waste = {name: 1 - real / sum(b["input_ids"].numel() for b in batches) for name, batches in (("padded", padded), ("packed", packed))}
    run(model, padded[:2])  # warm-up
    times = {"padded": [], "packed": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both
        times["padded"].append(run(model, padded))
        times["packed"].append(run(model, packed))
    rate = {k: real / statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "packing",
        "samples": args.samples, "real_tokens": real, "batches": len(plan),
        "rows": {"padded": sum(b["input_ids"].shape[0] for b in padded), "packed": sum(b["input_ids"].shape[0] for b in packed)},
        "padding_waste": {k: round(v, 4) for k, v in waste.items()},
        "real_tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio": round(rate["packed"] / rate["padded"], 3),
        "ratios_per_repeat": [round(a / b, 3) for a, b in zip(times["padded"], times["packed"])],
        "model": "Llama 2 layers × 128 (random init), fp32, SDPA; batches of 16 samples, rows of 2048",
        "machine": machine(),
        "command": "python -m lmm.bench.packing " + " ".join(argv or []),
    }
    print(f"padded (LLaVA grouping) waste {waste['padded']:.1%}  {rate['padded']:9.1f} real tokens/s")
    print(f"packed                  waste {waste['packed']:.1%}  {rate['packed']:9.1f} real tokens/s")
    print(f"ratio {result['ratio']:.2f}x (median of {args.repeats}; per repeat {result['ratios_per_repeat']})")
    return save_result(result, args.out)


if __name__ == "__main__":
    main()
