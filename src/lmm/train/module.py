"""LightningModule: which parts train (the stage), the optimiser and schedule, loss and logging."""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from lmm.model.lmm import COMPONENTS, LMM



def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LMMModule(L.LightningModule):
    """Trains the LMM for one stage.

    `train` names the components that learn (LLaVA pretrain: connector; finetune: connector +
    llm); the rest are frozen and kept in eval mode. Only trainable parameters reach AdamW.
    """

    def __init__(
        self,
        model: LMM,
        train: dict[str, bool],
        lr: float,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        betas: tuple[float, float] = (0.9, 0.999),
        vision_last_blocks: int | None = None,
    ):
        super().__init__()
        model.set_trainable(train, vision_last_blocks)
        self.model = model
        self.trains = {name: any(p.requires_grad for p in getattr(model, name).parameters()) for name in COMPONENTS}
        self.lr, self.weight_decay, self.warmup_ratio, self.betas = lr, weight_decay, warmup_ratio, tuple(betas)
        self.skipped_total = 0
        self._last_step_time: float | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        for name, trains in self.trains.items():  # frozen parts stay in eval mode (no dropout)
            if not trains:
                getattr(self.model, name).eval()
        return self

    def forward(self, batch: dict):
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            instruction_ids=batch.get("instruction_ids"),
            instruction_mask=batch.get("instruction_mask"),
        )

    def _count_skips(self, batch: dict) -> None:
        skipped = sum(batch.get("skipped", {}).values())
        if skipped:
            self.skipped_total += skipped
            print(f"[lmm] skipped {skipped} sample(s) in this batch: {batch['skipped']} (total {self.skipped_total})")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._count_skips(batch)
        loss = self(batch).loss
        now = time.perf_counter()
        tokens = int(batch["attention_mask"].sum())
        if self._last_step_time is not None:
            self.log("train/tokens_per_s", tokens / (now - self._last_step_time), batch_size=1)
        self._last_step_time = now
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        self.log("train/skipped_samples", float(self.skipped_total), batch_size=1)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._count_skips(batch)
        if batch["input_ids"].shape[0]:
            self.log("val/loss", self(batch).loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        total = int(self.trainer.max_steps)
        if total <= 0:
            raise ValueError("trainer.max_steps must be set: training streams are infinite (resampled shards)")
        warmup = max(1, round(self.warmup_ratio * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
