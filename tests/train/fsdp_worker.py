"""Train the tiny model on fixed batches, single-process or under FSDP2 with 2 CPU processes.

    python -m tests.train.fsdp_worker WORKDIR fsdp     (Lightning starts the second process)

WORKDIR holds `init.safetensors` (the starting weights) and `batches.pt` (2 micro-batches per
step). Single process: gradient accumulation over both micro-batches of a step. FSDP: rank r
takes micro-batch r of each step; gradients averaged over ranks equal the accumulated ones.
The FSDP run stops after step 3 (a sharded checkpoint is saved there), resumes from that
checkpoint to step 6, and writes each rank's per-step losses and the gathered final weights.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, IterableDataset

from lmm.build.model import build_model
from lmm.build.stage import Stage
from lmm.train.checkpoint import AtomicCheckpoint
from lmm.train.module import LMMModule
from lmm.train.strategy import FSDP2Strategy
from tests.conftest import compose_config

STEPS = 6
STOP_AT = 3


class RecordingModule(LMMModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append((self.trainer.global_step, float(loss)))
        return loss


class StepBatches(IterableDataset):
    """Micro-batch `2·step + slot` for each step from `start`; slot = rank (FSDP) or 0 and 1 (one process)."""

    def __init__(self, batches: list[dict], start: int, slots: list[int]):
        self.batches, self.start, self.slots = batches, start, slots

    def __iter__(self):
        for step in range(self.start, STEPS):
            for slot in self.slots:
                yield self.batches[2 * step + slot]


def module(workdir: Path, loss: str = "fused") -> RecordingModule:
    model = build_model(
        compose_config(["vision=tiny", "llm=tiny", f"model.loss={loss}"]),
        image_token_id=int(os.environ.get("LMM_TEST_IMAGE_TOKEN", "4")),
    )
    model.load_state_dict(load_file(str(workdir / "init.safetensors")))
    return RecordingModule(
        model, Stage(train={"connector": True, "llm": True}, optim={"lr": 1e-3, "warmup_ratio": 0.2})
    )


def trainer(strategy, callbacks=(), accumulate: int = 1, devices: int = 1) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
    )


def single_process(workdir: Path) -> list[float]:
    """Per-step losses (mean of the step's two micro-batches) of the reference run: one process,
    transformers' loss on the full logits (the FSDP run takes the fused loss, model.loss's default)."""
    batches = torch.load(workdir / "batches.pt", weights_only=False)
    lit = module(workdir, loss="plain")
    trainer("auto", accumulate=2).fit(lit, DataLoader(StepBatches(batches, 0, [0, 1]), batch_size=None))
    losses = [loss for _, loss in lit.losses]
    return [(a + b) / 2 for a, b in zip(losses[::2], losses[1::2], strict=True)]


class StateBytes(L.Callback):
    """This rank's parameter, gradient and AdamW-state bytes just before each optimizer step
    (the last one is kept): what lmm.analysis.simulate predicts for the same config."""

    def __init__(self):
        self.bytes: dict[str, int] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        from lmm.analysis.simulate.fake_step import state_bytes

        self.bytes = state_bytes(pl_module.model, optimizer)


class StopAt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == STOP_AT:
            trainer.should_stop = True


def fsdp(workdir: Path) -> None:
    batches = torch.load(workdir / "batches.pt", weights_only=False)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    strategy = lambda: FSDP2Strategy(param_dtype="float32", reduce_dtype="float32")  # noqa: E731
    checkpoints = functools.partial(
        AtomicCheckpoint, dirpath=workdir / "checkpoints", save_last=True, every_n_train_steps=STOP_AT, save_top_k=0
    )
    first = module(workdir)
    trainer(strategy(), [checkpoints(), StopAt()], devices=2).fit(
        first, DataLoader(StepBatches(batches, 0, [rank]), batch_size=None)
    )
    second = module(workdir)
    measured = StateBytes()
    resumed = trainer(strategy(), [checkpoints(), measured], devices=2)
    resumed.fit(
        second,
        DataLoader(StepBatches(batches, STOP_AT, [rank]), batch_size=None),
        ckpt_path=str(workdir / "checkpoints" / "last.ckpt"),
    )
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(second.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    losses = [loss for _, loss in first.losses + second.losses]
    (workdir / f"losses_rank{rank}.json").write_text(json.dumps(losses))
    (workdir / f"state_bytes_rank{rank}.json").write_text(json.dumps(measured.bytes))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, str(workdir / "final.safetensors"))


if __name__ == "__main__":
    fsdp(Path(sys.argv[1]))
