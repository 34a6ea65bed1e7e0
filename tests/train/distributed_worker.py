"""Every stage under FSDP2 and DDP on 2 CPU processes (gloo), on the mix665k miniature (text-only
ShareGPT steps included), and runs where one rank alone meets a stopping condition.

    python -m tests.train.distributed_worker WORKDIR train   (Lightning starts the second process)
    python -m tests.train.distributed_worker WORKDIR stops

WORKDIR holds `data_root` (a file naming the data root) and `init_<scenario>.safetensors`.
`train`: each scenario trains to step STOP_AT (a checkpoint), resumes from it to STEPS, and each
rank writes its per-step losses and whether each step had images. `stops`: in each stop
scenario rank 1 alone meets the condition at step STOP_AT; each rank writes the message it
stopped with and how long after the trigger it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from safetensors.torch import load_file

from lmm.build.factory import build_run
from lmm.build.stage import Optim, stage_of
from lmm.core.ranks import AgreedStop
from lmm.data.collate import Collator
from lmm.data.sample import Skip
from lmm.train.checkpoint import AtomicCheckpoint
from lmm.train.module import LMMModule
from lmm.train.strategy import FSDP2Strategy
from tests.conftest import MULTI_IMAGE_DATA, compose_config

STEPS, STOP_AT = 6, 3
SCENARIOS = {  # name -> (strategy, config overrides)
    "fsdp_finetune": ("fsdp", ["stage=finetune"]),
    "ddp_finetune": ("ddp", ["stage=finetune"]),
    "fsdp_lora": ("fsdp", ["stage=lora", "stage.lora.r=4", "stage.lora.alpha=8", "stage.lora.dropout=0.0"]),
    "ddp_lora": ("ddp", ["stage=lora", "stage.lora.r=4", "stage.lora.alpha=8", "stage.lora.dropout=0.0"]),
    "fsdp_pretrain_vision_block": ("fsdp", ["stage=pretrain", "stage.vision_last_blocks=1"]),
    "fsdp_multi_image": (
        "fsdp",
        ["stage=finetune", *MULTI_IMAGE_DATA],
    ),  # micro-batches of 0, 1 and 2-3 images per sample
    # AnyRes on images of differing sizes: micro-batches of unequal views and visual tokens on the two ranks.
    "fsdp_anyres": ("fsdp", ["stage=finetune", "vision.image_aspect=anyres", *MULTI_IMAGE_DATA]),
}
if os.environ.get(
    "LMM_SCENARIOS"
):  # run some by hand: LMM_SCENARIOS=fsdp_anyres python -m tests.train.distributed_worker ...
    SCENARIOS = {name: SCENARIOS[name] for name in os.environ["LMM_SCENARIOS"].split(",")}
STOPS = (
    "skip_rate",
    "placeholders",
    "non_finite",
    "all_skipped",
)  # all_skipped must not stop: rank 1 trains on nothing


def config(data_root: Path, overrides: list[str]):
    return compose_config(
        [
            "data=llava_mix665k",
            "data.batch_size=2",
            "data.length_group_size=1",
            "data.num_workers=0",
            "data.sources.sharegpt.weight=3",
            *overrides,
        ],
        data_root,
    )


class InjectOnRankOne(L.Callback):
    """Turns rank 1's batch at STOP_AT into a divergent one, in place and before SkipAccounting
    sees it (so the skip accounting and the training step both get the divergent batch)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not module._trigger():
            return
        module.triggered_at = time.time()
        if module.stop == "skip_rate":  # rank 1 alone saw a corrupt sample
            changed = batch.replace(
                seen=batch.seen + 1, skipped={"image": 1}, skip_details=["bad.jpg: image: truncated"]
            )
        elif module.stop == "all_skipped":  # every sample of rank 1's share was unusable
            changed = Collator(0)([Skip(f"bad{i}", "image: truncated") for i in range(batch.seen)])
        elif module.stop == "placeholders":
            ids = batch.input_ids.clone()
            ids[0, -1] = module.model.image_token_id
            changed = batch.replace(input_ids=ids)
        else:
            return
        for f in dataclasses.fields(batch):
            setattr(batch, f.name, getattr(changed, f.name))


class RecordingModule(LMMModule):
    def __init__(self, *args, stop: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []
        self.images: list[bool] = []
        self.image_counts: list[tuple[int, int]] = []  # (images, samples) per micro-batch
        self.view_counts: list[int] = []  # tower inputs per micro-batch (AnyRes: overview + tiles per image)
        self.stop, self.triggered_at = stop, None

    def configure_callbacks(self):
        return [InjectOnRankOne(), *super().configure_callbacks()]

    def _trigger(self) -> bool:
        return self.stop is not None and self.global_rank == 1 and self.trainer.global_step == STOP_AT

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss.detach()))
        self.images.append(batch.pixel_values is not None)
        self.image_counts.append((batch.images, batch.rows))
        self.view_counts.append(batch.views)
        return loss

    def forward(self, batch):
        out = super().forward(batch)
        if self.stop == "non_finite" and self._trigger():
            out.loss = out.loss * float("nan")
        return out


def module(
    data_root: Path, overrides: list[str], init: Path, stop: str | None = None, **options
) -> tuple[RecordingModule, object]:
    cfg = config(data_root, overrides)
    model, processor = build_run(cfg)
    model.load_state_dict(load_file(str(init)))
    torch.manual_seed(0)  # LoRA's initialisation: the same on every rank, as seed_everything makes it in run.py
    stage = dataclasses.replace(stage_of(cfg), optim=Optim(lr=1e-3, warmup_ratio=0.2))
    lit = RecordingModule(model, stage, stop=stop, **options)
    data = instantiate(cfg.data, seed=0)
    data.attach(processor, processor.tokenizer.pad_token_id)
    return lit, data


def strategy(kind: str):
    return FSDP2Strategy(param_dtype="float32", reduce_dtype="float32") if kind == "fsdp" else DDPStrategy()


def trainer(kind, devices: int = 2, accumulate: int = 1, callbacks=(), max_steps: int = STEPS) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy(kind) if devices > 1 else "auto",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
        limit_val_batches=0,
    )


class StopAt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == STOP_AT:
            trainer.should_stop = True


def reference(workdir: Path, name: str) -> tuple[list[float], list[bool]]:
    """One process, 2 accumulation slots, the same global batches: per-step mean losses."""
    data_root = Path((workdir / "data_root").read_text())
    lit, data = module(data_root, SCENARIOS[name][1], workdir / f"init_{name}.safetensors")
    trainer("auto", devices=1, accumulate=2).fit(lit, datamodule=data)
    pairs = list(zip(lit.losses[::2], lit.losses[1::2], strict=True))
    return [(a + b) / 2 for a, b in pairs], lit.images[::2]


def train(workdir: Path) -> None:
    data_root = Path((workdir / "data_root").read_text())
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    for name, (kind, overrides) in SCENARIOS.items():
        init = workdir / f"init_{name}.safetensors"
        checkpoints = functools.partial(
            AtomicCheckpoint, dirpath=workdir / name, save_last=True, every_n_train_steps=STOP_AT, save_top_k=0
        )
        first, data = module(data_root, overrides, init)
        trainer(kind, callbacks=[checkpoints(), StopAt()]).fit(first, datamodule=data)
        second, data = module(data_root, overrides, init)
        trainer(kind, callbacks=[checkpoints()]).fit(
            second, datamodule=data, ckpt_path=str(workdir / name / "last.ckpt")
        )
        record = {
            "losses": first.losses + second.losses,
            "images": first.images + second.images,
            "image_counts": first.image_counts + second.image_counts,
            "view_counts": first.view_counts + second.view_counts,
        }
        (workdir / f"{name}_rank{rank}.json").write_text(json.dumps(record))


def stops(workdir: Path) -> None:
    data_root = Path((workdir / "data_root").read_text())
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    for stop in STOPS:
        lit, data = module(
            data_root,
            ["stage=finetune"],
            workdir / "init_fsdp_finetune.safetensors",
            stop=stop,
            max_skip_rate=1.0 if stop == "all_skipped" else 0.0,
            skip_check_after=1,
        )
        message = None
        try:
            trainer("fsdp").fit(lit, datamodule=data)
        except AgreedStop as e:
            message = str(e)
        (workdir / f"stop_{stop}_rank{rank}.json").write_text(
            json.dumps(
                {"message": message, "time": time.time(), "triggered_at": lit.triggered_at, "losses": lit.losses}
            )
        )
        torch.distributed.barrier()


if __name__ == "__main__":
    {"train": train, "stops": stops}[sys.argv[2]](Path(sys.argv[1]))
