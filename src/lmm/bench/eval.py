"""Benchmark: answers/s of batched generation (batch 32) against the batch-1 loop LLaVA's
evaluation uses, same model (llm=small, random init) and same synthetic questions.

    lmm bench eval [--questions 96]      (also: make bench-eval)

Questions are encoded once; only generation is timed. Also checks that both give the same answers,
and reports the answers each side produced beside its rate (no ratio when a side answered
nothing). Writes experiments/bench/eval.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from lmm.bench import checked_ratio, save_result
from lmm.build.factory import build_run
from lmm.core.config import CONF, register_resolvers
from lmm.data.collate import Collator
from lmm.data.sample import Example
from lmm.eval.generate import generate_texts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=96, help="images of the synthetic test split to ask about")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default="data", help="paths.data: where data/synthetic is (generated when absent)")
    parser.add_argument("--out", default="experiments/bench/eval.json")
    args = parser.parse_args(argv)
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "llm=small",
                "run_dir=/tmp/lmm-bench-eval",
                f"paths.data={args.data}",
                f"eval.benchmarks.synthetic.limit={args.questions}",
            ],
        )
    instantiate(cfg.data).ensure_data()
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    benchmark = instantiate(cfg.eval.benchmarks.synthetic)
    prepared, _, _ = benchmark._items(processor)
    encoded = [benchmark.encode(processor, question) for question in prepared]  # once: only generation is timed
    questions = [e for e in encoded if isinstance(e, Example)]
    model.eval()
    timings, answers = {}, {}
    for batch_size in (1, args.batch_size):
        loader = DataLoader(
            questions, batch_size=batch_size, collate_fn=Collator(processor.tokenizer.pad_token_id, "left")
        )
        start = time.perf_counter()
        answers[batch_size] = generate_texts(
            model, loader, processor.tokenizer, processor.template, benchmark.max_new_tokens
        )
        timings[batch_size] = time.perf_counter() - start
    work = {"batch 1": len(answers[1]), f"batch {args.batch_size}": len(answers[args.batch_size])}
    ratio = checked_ratio(
        work[f"batch {args.batch_size}"] / timings[args.batch_size], work["batch 1"] / timings[1], work
    )
    result = {
        "benchmark": "eval",
        "questions": len(questions),
        "answers": work,  # each side's: both answered every question
        "batch_1_answers_per_s": round(work["batch 1"] / timings[1], 2),
        f"batch_{args.batch_size}_answers_per_s": round(work[f"batch {args.batch_size}"] / timings[args.batch_size], 2),
        "ratio": round(ratio, 2),  # batched answers/s over batch-1 answers/s
        "same_answers": answers[1] == answers[args.batch_size],
        "model": "llm=small (3.7M, random init) + vision=tiny + connector=mlp, fp32",
    }
    print(f"batch 1   {result['batch_1_answers_per_s']:8.2f} answers/s  ({work['batch 1']} answers)")
    print(
        f"batch {args.batch_size:<3d} {result[f'batch_{args.batch_size}_answers_per_s']:8.2f} answers/s  "
        f"({work[f'batch {args.batch_size}']} answers)"
    )
    print(f"ratio     {result['ratio']:8.2f}x   (same answers: {result['same_answers']})")
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
