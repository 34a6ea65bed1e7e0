"""LightningModule: which parts train (the stage), the optimiser and schedule, loss and logging."""

from __future__ import annotations

import math
import time
from collections import Counter

import lightning as L
import torch

from lmm.model.lmm import COMPONENTS, LMM

MAX_SHOWN_SKIPS = 20  # skipped samples printed one by one; the rest are counted



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
        max_skip_rate: float = 0.01,
        skip_check_after: int = 1000,
    ):
        super().__init__()
        model.set_trainable(train, vision_last_blocks)
        self.model = model
        self.trains = {name: any(p.requires_grad for p in getattr(model, name).parameters()) for name in COMPONENTS}
        self.lr, self.weight_decay, self.warmup_ratio, self.betas = lr, weight_decay, warmup_ratio, tuple(betas)
        self.max_skip_rate, self.skip_check_after = max_skip_rate, skip_check_after
        self.seen_total = 0
        self.skipped: Counter = Counter()
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

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def _count_skips(self, batch: dict) -> None:
        """Count (and show the first few) skipped samples; stop when the skip rate is too high:
        silently training on a fraction of the data is worse than a crash."""
        self.seen_total += batch.get("seen", batch["input_ids"].shape[0])
        for detail in batch.get("skip_details", []):
            if self.skipped_total < MAX_SHOWN_SKIPS:
                print(f"[lmm] skipped {detail}")
        self.skipped.update(batch.get("skipped", {}))
        rate = self.skipped_total / max(1, self.seen_total)
        if self.seen_total >= self.skip_check_after and rate > self.max_skip_rate:
            raise RuntimeError(
                f"{self.skipped_total} of {self.seen_total} samples skipped ({rate:.1%} > data.max_skip_rate="
                f"{self.max_skip_rate:.1%}): {dict(self.skipped)}. Fix the data (see the skipped lines above) "
                "or raise data.max_skip_rate."
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        self._count_skips(batch)
        if not batch["input_ids"].shape[0]:
            return None  # every sample of this batch was skipped: no step
        loss = self(batch).loss
        now = time.perf_counter()
        tokens = int(batch["attention_mask"].sum())
        if self._last_step_time is not None:
            self.log("train/tokens_per_s", tokens / (now - self._last_step_time), batch_size=1)
        self._last_step_time = now
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        self.log("train/skipped_samples", float(self.skipped_total), batch_size=1)
        for kind, count in self.skipped.items():
            self.log(f"data/skipped/{kind}", float(count), batch_size=1)
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
