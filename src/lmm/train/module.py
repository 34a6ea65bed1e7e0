"""LightningModule: which parts train (the stage), the optimiser and schedule, loss and logging."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import lightning as L
import torch

from lmm.data.collate import Batch
from lmm.model.lmm import COMPONENTS, LMM
from lmm.train.agree import AgreedStop, gather_objects, gather_rows, ranks_where
from lmm.train.materialize import host_memory, materialize, on_meta
from lmm.train.stage import Stage
from lmm.train.throughput import FlopCounter, peak_flops, peak_memory_bytes

MAX_SHOWN_SKIPS = 20  # skipped samples printed one by one; the rest are counted



def rng_state() -> dict:
    """This process's random state: Python, torch CPU and (if any) CUDA generators."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LMMModule(L.LightningModule):
    """Trains the LMM for one stage (lmm.train.stage.Stage, applied to the model here): the
    components it does not train are frozen and kept in eval mode; only trainable parameters
    reach AdamW, one parameter group per component."""

    def __init__(
        self,
        model: LMM,
        stage: Stage,
        activation_checkpointing: bool = False,
        max_skip_rate: float = 0.01,
        skip_check_after: int = 1000,
    ):
        super().__init__()
        self.strict_loading = False  # checkpoints hold the trainable parameters only (on_load_checkpoint checks them)
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing:  # recompute each decoder layer's activations in the backward
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = stage.apply(model)
        self.optim = stage.optim
        self.trains = {name: any(p.requires_grad for p in getattr(model, name).parameters()) for name in COMPONENTS}
        self.max_skip_rate, self.skip_check_after = max_skip_rate, skip_check_after
        # A model built on the meta device (strategy=fsdp) is filled after sharding from this
        # full state, which only rank 0 holds (lmm.train.materialize); None elsewhere.
        self.initial_state: dict | None = None
        self.host_bytes_at_build: int | None = None  # resident bytes before the model was built (train.py)
        self.model_load_host_bytes = 0  # peak host memory added by building + loading the model
        self.seen_total = self.skipped_total = 0  # over all ranks (agreed every step)
        self.skipped: Counter = Counter()  # this rank's skips by kind
        self.flop_counter = FlopCounter.from_model(model)
        # Run totals (this rank); kept in checkpoints so a resumed run reports the whole run.
        self.totals = {"samples": 0, "tokens": 0, "flops": 0.0, "train_wall_s": 0.0}
        self._step_work: tuple[int, int, float] | None = None  # samples, tokens, FLOPs of the step in flight
        self._last_step_end: float | None = None
        self._peak_flops: float | None = None  # the device's bf16 peak, known once training starts

    def configure_model(self) -> None:
        """Under strategy=fsdp, shard the model (Lightning calls this inside the strategy's
        context); a model built on the meta device is then filled from rank 0's `initial_state`."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None and not getattr(self, "_sharded", False):
            shard(self.model, self.device_mesh)
            self._sharded = True
        if on_meta(self.model):
            materialize(self.model, self.device, self.initial_state)
            self.initial_state = None

    def train(self, mode: bool = True):
        super().train(mode)
        for name, trains in self.trains.items():  # frozen parts stay in eval mode (no dropout)...
            if name == "llm" and self.activation_checkpointing:
                continue  # ...except a checkpointed LLM: transformers recomputes layers only in train mode
            if not trains:
                getattr(self.model, name).eval()
        return self

    def forward(self, batch: Batch):
        # always_encode: every rank runs tower + connector every step (lmm.model.lmm.LMM.embed)
        return self.model(**batch.model_inputs(), always_encode=True)

    def _agree_on_batch(self, batch: Batch) -> None:
        """Gather every rank's facts about its batch (one all_gather): skips are counted over
        the world, and a placeholder mismatch or a skip-rate breach on any rank stops every
        rank at this step with the same message."""
        local = [batch.seen, sum(batch.skipped.values()), int((batch.input_ids == self.model.image_token_id).sum()),
                 batch.images * self.model.num_image_tokens]
        facts = gather_rows(self.trainer.strategy, local, self.device)  # [world, 4]
        for detail in batch.skip_details:
            if sum(self.skipped.values()) < MAX_SHOWN_SKIPS:
                print(f"[lmm] skipped {detail}")
        self.skipped.update(batch.skipped)
        self.seen_total += int(facts[:, 0].sum())
        self.skipped_total += int(facts[:, 1].sum())
        mismatched = ranks_where(facts[:, 2] != facts[:, 3])
        if mismatched:
            details = "; ".join(f"rank {r}: {int(facts[r, 2])} placeholder ids, {int(facts[r, 3])} image tokens" for r in mismatched)
            raise AgreedStop(f"image placeholders do not match the images ({details}): the tokenizer's image_tokens "
                             "must equal connector.num_tokens(vision.num_patches)")
        rate = self.skipped_total / max(1, self.seen_total)
        if self.seen_total >= self.skip_check_after and rate > self.max_skip_rate:
            kinds = sum((Counter(part) for part in gather_objects(dict(self.skipped))), Counter())
            raise AgreedStop(
                f"{self.skipped_total} of {self.seen_total} samples skipped on {self.trainer.world_size} rank(s) "
                f"({rate:.1%} > data.max_skip_rate={self.max_skip_rate:.1%}): {dict(sorted(kinds.items()))}. Fix the data "
                "(see the skipped lines above) or raise data.max_skip_rate."
            )

    def _agree_on_loss(self, loss: torch.Tensor) -> None:
        """A non-finite loss on any rank stops every rank before the backward."""
        finite = self.trainer.strategy.all_gather(torch.isfinite(loss.detach()).long().reshape(1)).reshape(-1)  # [world]
        bad = ranks_where(finite == 0)
        if bad:
            raise AgreedStop(f"non-finite loss on rank(s) {bad} at step {self.trainer.global_step}: lower the learning "
                             "rate, check the data, or train in bf16 instead of fp16")

    def _placeholder_batch(self, batch: Batch) -> Batch:
        """A rank whose samples were all skipped still runs a forward (and backward) through
        the same modules as the others, on two pad tokens weighted 0 (see training_step)."""
        pad = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        return Batch(input_ids=pad, labels=torch.tensor([[-100, 0]], device=self.device), attention_mask=torch.ones_like(pad))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self._agree_on_batch(batch)
        if not batch.rows:
            # Every sample of this rank's share was skipped. The step is not skipped: the other
            # ranks' samples train and this rank adds a zero gradient (skipping would leave DDP's
            # accumulated gradients unsynchronised and FSDP's collectives unmatched).
            loss = self(self._placeholder_batch(batch)).loss * 0.0
            self._agree_on_loss(loss)
            return loss
        loss = self(batch).loss
        self._agree_on_loss(loss)
        lengths = batch.sample_lengths  # attention is per sample
        # Counted here, not at batch end: a checkpoint written at this step's end must include it.
        self._step_work = (len(lengths), sum(lengths), self.flop_counter.step_flops(lengths, batch.images))
        for key, value in zip(("samples", "tokens", "flops"), self._step_work):
            self.totals[key] += value
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.rows)
        for group in self.optimizers().param_groups:
            self.log(f"train/lr/{group.get('name', 'all')}", group["lr"], batch_size=1)
        self.log("train/skipped_samples", float(self.skipped_total), batch_size=1)
        for kind, count in self.skipped.items():
            self.log(f"data/skipped/{kind}", float(count), batch_size=1)
        return loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if getattr(self, "_resumed_rng", None) is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None

    def on_train_start(self) -> None:
        if self.host_bytes_at_build is not None:  # the model is loaded; no optimizer state exists yet
            self.model_load_host_bytes = max(0, host_memory()[1] - self.host_bytes_at_build)
        self._peak_flops = peak_flops(self.device, self.trainer.precision)
        self._last_step_end = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        """Account the step that just ended (forward, backward, optimiser): rates per rank × ranks."""
        now = time.perf_counter()
        seconds, self._last_step_end = now - self._last_step_end, now
        if self._step_work is None:
            return
        samples, tokens, flops = self._step_work
        self._step_work = None
        self.totals["train_wall_s"] += seconds
        ranks = self.trainer.world_size
        self.log("train/tokens_per_s", ranks * tokens / seconds, batch_size=1)
        self.log("train/samples_per_s", ranks * samples / seconds, batch_size=1)
        self.log("train/tflops_per_step", ranks * flops / 1e12, batch_size=1)
        if self._peak_flops:
            self.log("train/mfu", flops / seconds / self._peak_flops, batch_size=1)

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the parameters this stage trains: all a checkpoint holds of the model."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen weights are not saved: a resumed run rebuilds them from their source (pretrained
        # weights, stage.init_from, or the seeded random init), as the run did when it started.
        if "state_dict" in checkpoint:  # absent on ranks that write no file
            trainable = self.trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["lmm_totals"] = dict(self.totals)
        checkpoint["lmm_rng"] = gather_objects(rng_state())  # every rank's (dropout, LoRA dropout): one file holds them all
        checkpoint["lmm_skips"] = {"seen": self.seen_total, "skipped": self.skipped_total}  # world totals, equal on every rank

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # a single-file checkpoint: exactly the trainable parameters
            saved, trainable = set(checkpoint["state_dict"]), self.trainable_keys()
            if saved != trainable:
                raise ValueError(f"the checkpoint does not hold this stage's trainable parameters (missing "
                                 f"{sorted(trainable - saved)[:3]}, unexpected {sorted(saved - trainable)[:3]}): "
                                 "was it written by another stage or model? force=true starts the run over")
        self.totals.update(checkpoint.get("lmm_totals", {}))
        states = checkpoint.get("lmm_rng") or []
        # Applied at the first training batch: the DataLoader draws its seed from the RNG when it
        # starts, which an uninterrupted run did before step 1, not at this step.
        self._resumed_rng = states[self.global_rank] if len(states) == self.trainer.world_size else None
        skips = checkpoint.get("lmm_skips", {})
        self.seen_total, self.skipped_total = skips.get("seen", 0), skips.get("skipped", 0)

    def cost_summary(self) -> dict:
        """Totals over all ranks (a collective: every rank must call it)."""
        keys = [key for key in self.totals if key != "train_wall_s"]
        rows = gather_rows(self.trainer.strategy, [float(self.totals[key]) for key in keys], self.device, torch.float64)
        summed = dict(zip(keys, rows.sum(dim=0).tolist()))
        memory, memory_kind = peak_memory_bytes(self.device)
        loads = gather_rows(self.trainer.strategy, [self.model_load_host_bytes], self.device).flatten().tolist()
        wall, peak = self.totals["train_wall_s"], self._peak_flops
        return {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "steps": int(self.trainer.global_step),
            "samples_seen": int(summed["samples"]),
            "tokens_seen": int(summed["tokens"]),
            "flops": summed["flops"],
            "train_wall_s": round(wall, 3),
            "tokens_per_s": summed["tokens"] / wall if wall else None,
            "mfu": summed["flops"] / wall / (peak * self.trainer.world_size) if wall and peak else None,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "devices": self.trainer.world_size,
            "model_load_host_bytes": [int(x) for x in loads],  # per rank: peak host memory added by building the model
        }

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._agree_on_batch(batch)
        if not batch.rows:  # the same forward as the other ranks (FSDP all-gathers), not logged
            self(self._placeholder_batch(batch))
            return
        self.log("val/loss", self(batch).loss, prog_bar=True, batch_size=batch.rows)

    def configure_optimizers(self):
        groups = []
        for name in COMPONENTS:  # one group per component: LLaVA's LoRA recipe gives the connector its own lr
            params = [p for p in getattr(self.model, name).parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": self.optim.component_lr.get(name, self.optim.lr), "name": name})
        optim = self.optim
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas)
        total = int(self.trainer.max_steps)
        if total <= 0:
            raise ValueError("trainer.max_steps must be set: training streams are infinite (resampled shards)")
        warmup = max(1, round(optim.warmup_ratio * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
