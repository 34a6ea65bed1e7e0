"""Benchmark (GPU only): MFU of a training step of a ~1.1B random-init LLM (TinyLlama's
architecture) + CLIP-L/14-336 + mlp2x_gelu under FSDP2 with bf16 on one GPU, with and without
activation checkpointing and torch.compile.

    lmm bench mfu [--steps 20] [--batch-size 8]      (also: make bench-mfu)
    lmm bench mfu --smoke      # the same four runs on CPU with tiny models: checks the path, no MFU

Batches: every sample one 336-px image (576 visual tokens) + 1472 text tokens = 2048 tokens.
MFU = model FLOPs per step (lmm.train.throughput: parameters + attention, no recomputation) /
step time / the GPU's dense bf16 peak, averaged over the steps after 5 warm-up steps.
Writes experiments/bench/mfu.json. For reference: LLaVA-1.5's own training ran at roughly
25-30% MFU on A100s; the goal here is ≥ 50% on an H100.
"""

from __future__ import annotations

import argparse
import itertools
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, IterableDataset

from lmm.bench import save_result
from lmm.build.model import build_model
from lmm.build.stage import Stage
from lmm.core.config import CONF, register_resolvers
from lmm.data.collate import Batch
from lmm.train.module import LMMModule
from lmm.train.strategy import FSDP2Strategy
from lmm.train.throughput import peak_flops

WARMUP = 5


class FakeBatches(IterableDataset):
    def __init__(
        self, batch: int, image_tokens: int, text_tokens: int, image_size: int, vocab: int, image_token_id: int
    ):
        ids = torch.randint(5, vocab, (batch, image_tokens + text_tokens))
        ids[:, 1 : 1 + image_tokens] = image_token_id
        labels = ids.clone()
        labels[:, : 1 + image_tokens] = -100
        self.batch = Batch(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            labels=labels,
            pixel_values=torch.randn(batch, 3, image_size, image_size),
            seen=batch,
            sample_lengths=[ids.shape[1]] * batch,
        )

    def __iter__(self):
        return itertools.repeat(self.batch)


class Timer(L.Callback):
    def __init__(self):
        self.marks: list[float] = []

    def on_train_batch_end(self, *args):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())


def measure(
    cfg, batch_size: int, steps: int, checkpointing: bool, compiled: bool, sequence: int, accelerator: str
) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg, image_token_id=cfg.llm.model.arch.vocab_size - 1, load_weights=False)
    module = LMMModule(
        model, Stage(train={"connector": True, "llm": True}, optim={"lr": 1e-5}), activation_checkpointing=checkpointing
    )
    timer = Timer()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        strategy=FSDP2Strategy(compile_layers=compiled),
        precision="32-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    data = FakeBatches(
        batch_size,
        model.num_image_tokens,
        sequence - model.num_image_tokens,
        model.vision.image_size,
        cfg.llm.model.arch.vocab_size,
        model.image_token_id,
    )
    gpu = accelerator == "gpu"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, DataLoader(data, batch_size=None))
    seconds = (timer.marks[-1] - timer.marks[WARMUP - 1]) / (steps - WARMUP)
    flops = module.throughput.flop_counter.step_flops([sequence] * batch_size, batch_size)
    peak = peak_flops(torch.device("cuda"), "bf16-mixed") if gpu else None
    return {
        "activation_checkpointing": checkpointing,
        "compile": compiled,
        "step_s": round(seconds, 4),
        "tokens_per_s": round(batch_size * sequence / seconds, 1),
        "tflops_per_s": round(flops / seconds / 1e12, 4),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--llm", default="tinyllama")
    parser.add_argument("--out", default="experiments/bench/mfu.json")
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, tiny models, short sequences: checks the benchmark runs"
    )
    args = parser.parse_args(argv)
    if not (args.smoke or torch.cuda.is_available()):
        raise SystemExit(
            "bench-mfu needs a CUDA GPU (it measures MFU against the GPU's bf16 peak); --smoke checks it on CPU"
        )
    vision, sequence = ("tiny", 2 * 64) if args.smoke else ("clip_l14_336", 2048)
    llm = "tiny" if args.smoke else args.llm
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"vision={vision}",
                "vision.pretrained=null",
                f"llm={llm}",
                "llm.model.pretrained=null",
                "llm.model.dtype=float32",
                "run_dir=/tmp/lmm-bench-mfu",
            ],
        )
    accelerator = "cpu" if args.smoke else "gpu"
    runs = [
        measure(cfg, args.batch_size, args.steps, checkpointing, compiled, sequence, accelerator)
        for checkpointing, compiled in ((False, False), (True, False), (False, True), (True, True))
    ]
    for run in runs:
        print(
            f"checkpointing={run['activation_checkpointing']!s:5} compile={run['compile']!s:5} "
            f"{run['tokens_per_s']:10.1f} tokens/s  {run['tflops_per_s']:6.1f} TFLOP/s  MFU {run['mfu']}  peak "
            f"{run['peak_memory_gib']} GiB"
        )
    result = {
        "benchmark": "mfu",
        "runs": runs,
        "gpu": torch.cuda.get_device_name() if accelerator == "gpu" else None,
        "batch": args.batch_size,
        "sequence": sequence,
        "llm": llm,
        "smoke": args.smoke,
    }
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
