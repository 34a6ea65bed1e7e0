"""Benchmark: real (non-pad) tokens/s of packed (padding-free) batches against LLaVA's
modality-and-length-grouped padded batches, on a length distribution shaped like mix665k, same
samples per step, same model.

    lmm bench packing [--samples 192] [--repeats 3] [--shapes narrow,wide]   (make bench-packing)

Lengths: 94% image conversations, 576 image tokens + text drawn log-normally (median 120 tokens),
6% ShareGPT-like text-only conversations (median 600), everything capped at 2048 — the shape of
llava_v1_5_mix665k (40K of its 665K samples are ShareGPT). Batches of 16 samples are formed as
LLaVA's `group_by_modality_length` does on 8 GPUs (pools of 16 × 8 samples of one modality,
sorted by length, cut into batches), then collated by lmm's Collator padded (SDPA with the padding
mask, as LLaVA's code runs without flash-attn), or packed (data.packing=true: one row, attention per
sample). Timed: forward + backward of a random Llama (image tokens stand in as tokens: the vision
work per image is the same in both) of two shapes, because the gain depends on attention's share of
the work: at most 1 / (1 − padding waste) on the token-wise layers, more on attention (per-sample
causal attention instead of the padded square). Writes experiments/bench/packing.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.bench import checked_ratio, save_result
from lmm.data.collate import Batch, Collator
from lmm.data.sample import Example
from lmm.model.attention import use_packed_attention

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
        out.append(Example(ids, [-100] * min(prompt, n - 1) + ids[min(prompt, n - 1) :], None, {"image": has_image}))
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


def run(model, batches: list[Batch]) -> float:
    """Seconds for forward + backward over every batch."""
    start = time.perf_counter()
    for batch in batches:
        out = model(input_ids=batch.input_ids, labels=batch.labels, use_cache=False, **batch.attention_inputs())
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


SHAPES = {  # name: (hidden, intermediate, heads); 2 layers, vocab 1024
    "narrow": (128, 344, 4),  # attention is most of the work per token
    "wide": (512, 1376, 8),  # attention about a quarter of each layer's work
}


def measure(shape: str, items: list[Example], plan: list[list[Example]], repeats: int) -> dict:
    """Padded vs packed forward + backward of one model shape, interleaved, median of `repeats`."""
    hidden, intermediate, heads = SHAPES[shape]
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=heads,
        vocab_size=1024,
        max_position_embeddings=MAX_LENGTH,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    use_packed_attention(model)  # padded batches (with their mask) still run transformers' SDPA
    batches = {"padded": [Collator(0)(b) for b in plan], "packed": [Collator(0, packed=True)(b) for b in plan]}
    run(model, batches["padded"][:2])  # warm-up
    times = {"padded": [], "packed": []}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both
        for mode in times:
            times[mode].append(run(model, batches[mode]))
    real = {
        mode: sum(sum(b.sample_lengths) for b in mode_batches) for mode, mode_batches in batches.items()
    }  # each side's: the same samples
    rate = {mode: real[mode] / statistics.median(seconds) for mode, seconds in times.items()}
    ratios = [
        round(checked_ratio(1 / packed, 1 / padded, real), 3)
        for padded, packed in zip(times["padded"], times["packed"], strict=True)
    ]
    print(
        f"{shape:6s} 2 × {hidden}: {real['packed']} real tokens each; padded {rate['padded']:9.1f}  packed "
        f"{rate['packed']:9.1f} real tokens/s  "
        f"ratio {statistics.median(ratios):.2f}x (median of {repeats}: {ratios})"
    )
    return {
        "model": f"Llama 2 layers × {hidden} ({heads} heads, random init), fp32",
        "real_tokens_per_s": {mode: round(value, 1) for mode, value in rate.items()},  # median time of each
        "ratio": statistics.median(ratios),  # packed/padded speed, median over the interleaved repeats
        "ratios_per_repeat": ratios,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="narrow,wide", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--out", default="experiments/bench/packing.json")
    args = parser.parse_args(argv)
    items = examples(draw_lengths(args.samples), vocab=1024)
    plan = grouped_batches(items)
    real = sum(len(x.input_ids) for x in items)
    cells = {
        "padded": sum(len(b) * max(len(x.input_ids) for x in b) for b in plan),
        "packed": sum(len(x.input_ids) for b in plan for x in b),  # one row per batch: no pad token
    }
    waste = {mode: 1 - real / count for mode, count in cells.items()}
    print(
        f"padding waste: LLaVA grouping {waste['padded']:.1%}, packed {waste['packed']:.1%} "
        f"({args.samples} samples, {len(plan)} batches of up to {BATCH})"
    )
    result = {
        "benchmark": "packing",
        "samples": args.samples,
        "real_tokens": real,
        "batches": len(plan),
        "padding_waste": {mode: round(value, 4) for mode, value in waste.items()},
        "shapes": {shape: measure(shape, items, plan, args.repeats) for shape in args.shapes.split(",")},
        "setup": "batches of 16 samples grouped as LLaVA on 8 GPUs; padded: SDPA with the padding mask; "
        "packed: one row per batch, per-sample causal SDPA (lmm_varlen)",
    }
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
