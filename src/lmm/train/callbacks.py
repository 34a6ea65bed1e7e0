"""Lightning callbacks of a training run: skip accounting agreed by every rank, and throughput.

LMMModule adds both (`configure_callbacks`), so every Trainer that fits it has them; their
state (world totals of seen and skipped samples; this rank's run totals) travels in checkpoints.
"""

from __future__ import annotations

import time
from collections import Counter

import lightning as L
import torch

from lmm.build.meta import host_memory
from lmm.core.ranks import AgreedStop, gather_objects, gather_rows, ranks_where
from lmm.data.collate import Batch
from lmm.train.throughput import FlopCounter, peak_flops, peak_memory_bytes

MAX_SHOWN_SKIPS = 20  # skipped samples printed one by one; the rest are counted


class SkipAccounting(L.Callback):
    """Before every training and validation batch, one all_gather of every rank's facts about
    its batch: skips are counted over the world, and a placeholder mismatch or a skip-rate
    breach on any rank stops every rank at that step with the same message."""

    def __init__(self, max_skip_rate: float = 0.01, skip_check_after: int = 1000):
        self.max_skip_rate, self.skip_check_after = max_skip_rate, skip_check_after
        self.seen_total = self.skipped_total = 0  # over all ranks (agreed every step)
        self.skipped: Counter = Counter()  # this rank's skips by kind

    def agree(self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, training: bool = True) -> None:
        """`training=False` (a validation batch): checked alike, but not counted in the run's totals
        (samples seen are the training samples: steps × global batch + skips)."""
        model = module.model
        local = [
            batch.seen,
            sum(batch.skipped.values()),
            int((batch.input_ids == model.image_token_id).sum()),
            model.expected_placeholders(batch.pixel_values, batch.image_sizes),
        ]
        facts = gather_rows(trainer.strategy, local, module.device)  # [world, 4]
        for detail in batch.skip_details:
            if sum(self.skipped.values()) < MAX_SHOWN_SKIPS:
                print(f"[lmm] skipped {detail}")
        if training:
            self.skipped.update(batch.skipped)
            self.seen_total += int(facts[:, 0].sum())
            self.skipped_total += int(facts[:, 1].sum())
        mismatched = ranks_where(facts[:, 2] != facts[:, 3])
        if mismatched:
            details = "; ".join(
                f"rank {r}: {int(facts[r, 2])} placeholder ids, {int(facts[r, 3])} image tokens" for r in mismatched
            )
            raise AgreedStop(
                f"image placeholders do not match the images ({details}): the tokenizer's image_tokens "
                "must equal the model's image_tokens()"
            )
        rate = self.skipped_total / max(1, self.seen_total)
        if self.seen_total >= self.skip_check_after and rate > self.max_skip_rate:
            kinds = sum((Counter(part) for part in gather_objects(dict(self.skipped))), Counter())
            raise AgreedStop(
                f"{self.skipped_total} of {self.seen_total} samples skipped on {trainer.world_size} rank(s) "
                f"({rate:.1%} > data.max_skip_rate={self.max_skip_rate:.1%}): {dict(sorted(kinds.items()))}. Fix the "
                "data "
                "(see the skipped lines above) or raise data.max_skip_rate."
            )

    def check_run(self, tokens_seen: int) -> None:
        """A run that trained on no tokens, or skipped more than data.max_skip_rate of its samples
        over the whole run, did not happen (world totals: every rank decides alike)."""
        seen, skipped = self.seen_total, self.skipped_total
        if not tokens_seen:
            raise AgreedStop(
                f"trained on no tokens: {skipped} of {seen} samples were skipped (see the skipped lines above; "
                "e.g. data.max_length too small for the image tokens, or unreadable data)"
            )
        if seen and skipped / seen > self.max_skip_rate:
            raise AgreedStop(
                f"{skipped} of {seen} samples skipped ({skipped / seen:.1%} > data.max_skip_rate="
                f"{self.max_skip_rate:.1%}) over the whole run; fix the data or raise data.max_skip_rate"
            )

    def on_train_batch_start(self, trainer, module, batch: Batch, batch_idx: int) -> None:
        self.agree(trainer, module, batch)

    def on_validation_batch_start(self, trainer, module, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.agree(trainer, module, batch, training=False)

    def on_train_batch_end(self, trainer, module, outputs, batch: Batch, batch_idx: int) -> None:
        module.log("train/skipped_samples", float(self.skipped_total), batch_size=1)
        for kind, count in self.skipped.items():
            module.log(f"data/skipped/{kind}", float(count), batch_size=1)

    def state_dict(self) -> dict:
        return {"seen": self.seen_total, "skipped": self.skipped_total}  # world totals, equal on every rank

    def load_state_dict(self, state: dict) -> None:
        self.seen_total, self.skipped_total = state.get("seen", 0), state.get("skipped", 0)


class Throughput(L.Callback):
    """Per step: tokens/s, samples/s, TFLOPs and MFU (rates per rank × ranks); per run: totals
    of samples, tokens, FLOPs and training time, and the cost summary results.json keeps."""

    def __init__(self, flop_counter: FlopCounter):
        self.flop_counter = flop_counter
        # Run totals over all ranks (gathered every step, so equal on every rank), and rank 0's
        # training time; kept in checkpoints, so a resumed run (on any number of ranks) reports the whole run.
        self.totals = {"samples": 0, "tokens": 0, "flops": 0.0, "images": 0, "visual_tokens": 0, "train_wall_s": 0.0}
        self.model_load_host_bytes = 0  # peak host memory added by building + loading the model
        self._step_work: tuple[int, int, float] | None = None  # samples, tokens, FLOPs of the step in flight
        self._last_step_end: float | None = None
        self._peak_flops: float | None = None  # the device's bf16 peak, known once training starts

    def on_train_start(self, trainer, module) -> None:
        if module.host_bytes_at_build is not None:  # the model is loaded; no optimizer state exists yet
            self.model_load_host_bytes = max(0, host_memory()[1] - module.host_bytes_at_build)
        self._peak_flops = peak_flops(module.device, trainer.precision)
        self._last_step_end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch: Batch, batch_idx: int) -> None:
        """Counted at the start, not at the end: a checkpoint written at this step's end must include it.
        One gather on every rank (a placeholder step, every sample of a rank's share skipped, adds zeros)."""
        work = [0.0] * 5
        if batch.rows:
            lengths = batch.sample_lengths  # attention is per sample
            work = [
                len(lengths),
                sum(lengths),
                self.flop_counter.step_flops(lengths, batch.views),
                batch.images,  # the tower runs once per view
                int((batch.input_ids == module.model.image_token_id).sum()),
            ]  # AnyRes: visual tokens differ per image
            self._step_work = tuple(work[:3])
        world = (
            gather_rows(trainer.strategy, [float(x) for x in work], module.device, torch.float64).sum(dim=0).tolist()
        )
        for key, value in zip(("samples", "tokens", "flops", "images", "visual_tokens"), world, strict=True):
            self.totals[key] += value

    def on_train_batch_end(self, trainer, module, outputs, batch: Batch, batch_idx: int) -> None:
        """Account the step that just ended (forward, backward, optimiser)."""
        now = time.perf_counter()
        seconds, self._last_step_end = now - self._last_step_end, now
        if self._step_work is None:
            return
        samples, tokens, flops = self._step_work
        self._step_work = None
        self.totals["train_wall_s"] += seconds
        ranks = trainer.world_size
        module.log("train/tokens_per_s", ranks * tokens / seconds, batch_size=1)
        module.log("train/samples_per_s", ranks * samples / seconds, batch_size=1)
        module.log("train/tflops_per_step", ranks * flops / 1e12, batch_size=1)
        if self._peak_flops:
            module.log("train/mfu", flops / seconds / self._peak_flops, batch_size=1)

    def cost_summary(self, trainer: L.Trainer, module: L.LightningModule) -> dict:
        """Totals over all ranks (a collective: every rank must call it)."""
        summed = self.totals  # world totals already
        memory, memory_kind = peak_memory_bytes(module.device)
        loads = gather_rows(trainer.strategy, [self.model_load_host_bytes], module.device).flatten().tolist()
        wall, peak = self.totals["train_wall_s"], self._peak_flops
        parameters = list(module.model.parameters())
        return {
            "parameters": sum(p.numel() for p in parameters),
            "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
            "steps": int(trainer.global_step),
            "samples_seen": int(summed["samples"]),
            "tokens_seen": int(summed["tokens"]),
            "visual_tokens_per_image": summed["visual_tokens"] / summed["images"] if summed["images"] else None,
            "flops": summed["flops"],
            "train_wall_s": round(wall, 3),
            "tokens_per_s": summed["tokens"] / wall if wall else None,
            "mfu": summed["flops"] / wall / (peak * trainer.world_size) if wall and peak else None,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "devices": trainer.world_size,
            "model_load_host_bytes": [int(x) for x in loads],  # per rank: peak host memory added by building the model
        }

    def state_dict(self) -> dict:
        return {"totals": dict(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        self.totals.update(state.get("totals", {}))
