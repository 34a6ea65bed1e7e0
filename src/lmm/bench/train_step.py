"""Benchmark: tokens/s of lmm's training step (the LightningModule under a Lightning Trainer)
against a bare PyTorch loop over transformers' LlavaForConditionalGeneration, with an identical
model (lmm's exported to HF Llava: same weights), identical batches and the same AdamW.

    lmm bench train-step [--steps 30] [--repeats 3]      (also: make bench-train-step)

Model: the tiny CLIP-style tower + mlp2x_gelu + llm=small (3.7M), fp32, finetune stage (connector +
LLM train, tower frozen), batches of 16 synthetic training samples. The first 5 steps of each
run are warm-up and not timed. Goal ≥ 1.0×: the framework adds no tax.
Writes experiments/bench/train_step.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from lmm.bench import checked_ratio, save_result
from lmm.build.factory import build_run
from lmm.build.stage import Stage
from lmm.core.config import CONF, register_resolvers
from lmm.data.collate import Batch
from lmm.interop.export import save_hf
from lmm.train.module import LMMModule

WARMUP = 5


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter())


def lmm_tokens_per_s(model, batches: list[Batch], steps: int) -> tuple[int, float]:
    """(tokens trained in the timed steps, seconds they took)."""
    module = LMMModule(model, Stage(train={"connector": True, "llm": True}, optim={"lr": 1e-4, "warmup_ratio": 0.0}))
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    trained = timer.times[WARMUP - 1 : steps]  # the ends of the warm-up's last step and of each timed step
    tokens = sum(int(b.attention_mask.sum()) for b in batches[WARMUP : WARMUP + len(trained) - 1])
    return tokens, trained[-1] - trained[0] if len(trained) > 1 else 0.0


def bare_tokens_per_s(hf, batches: list[Batch], steps: int) -> tuple[int, float]:
    hf.train()
    hf.model.vision_tower.requires_grad_(False)
    hf.model.vision_tower.eval()
    optimizer = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-4)
    marks = []
    for batch in batches[:steps]:
        loss = hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            labels=batch.labels,
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
    tokens = sum(int(b.attention_mask.sum()) for b in batches[WARMUP:steps])
    return tokens, marks[steps - 1] - marks[WARMUP - 1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="data", help="paths.data: where data/synthetic is (generated when absent)")
    parser.add_argument("--out", default="experiments/bench/train_step.json")
    args = parser.parse_args(argv)
    from transformers import LlavaForConditionalGeneration

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["llm=small", "run_dir=/tmp/lmm-bench-train-step", f"paths.data={args.data}"])
    data = instantiate(cfg.data, seed=0, num_workers=0)
    data.ensure_data()
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    data.attach(processor, processor.tokenizer.pad_token_id)
    stream = iter(data.train_dataloader())
    batches = [next(stream) for _ in range(args.steps)]
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, processor, cfg, Path(tmp) / "hf")
        hf_path = Path(tmp) / "hf"
        work = {"lmm": [], "bare": []}  # (tokens, seconds) per repeat
        for _ in range(args.repeats):  # interleaved, from the same starting weights each time
            model.load_state_dict(initial)
            work["lmm"].append(lmm_tokens_per_s(model, batches, args.steps))
            work["bare"].append(
                bare_tokens_per_s(LlavaForConditionalGeneration.from_pretrained(hf_path), batches, args.steps)
            )
    rates = {side: [tokens / seconds if seconds else 0.0 for tokens, seconds in runs] for side, runs in work.items()}
    ratios = [
        checked_ratio(a, b, {"lmm tokens": ta, "bare tokens": tb})
        for a, b, (ta, _), (tb, _) in zip(rates["lmm"], rates["bare"], work["lmm"], work["bare"], strict=True)
    ]
    tokens = {side: sum(t for t, _ in runs) for side, runs in work.items()}
    result = {
        "benchmark": "train_step",
        "lmm_tokens_per_s": round(statistics.median(rates["lmm"]), 1),
        "bare_llava_tokens_per_s": round(statistics.median(rates["bare"]), 1),
        "tokens_timed": tokens,  # each side's, over all repeats: the same batches
        "ratio": round(statistics.median(ratios), 3),
        "ratios_per_repeat": [round(r, 3) for r in ratios],
        "steps_timed": args.steps - WARMUP,
        "model": "vision=tiny + connector=mlp + llm=small (random init), fp32, batch 16, AdamW",
    }
    print(f"lmm (Lightning)        {result['lmm_tokens_per_s']:9.1f} tokens/s  ({tokens['lmm']} tokens timed)")
    print(f"bare loop over HF Llava {result['bare_llava_tokens_per_s']:9.1f} tokens/s  ({tokens['bare']} tokens timed)")
    print(f"ratio {result['ratio']:.3f}x (median of {args.repeats}; per repeat {result['ratios_per_repeat']})")
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
