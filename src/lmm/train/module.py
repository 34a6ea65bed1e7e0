"""LightningModule: the stage applied, the optimiser and schedule, the loss (agreed finite by every rank),
checkpoint contents."""

from __future__ import annotations

import math
import random

import lightning as L
import torch

from lmm.build.meta import materialize, on_meta
from lmm.build.stage import Stage
from lmm.core.ranks import AgreedStop, gather_objects, ranks_where
from lmm.data.collate import Batch
from lmm.model.lmm import COMPONENTS, LMM
from lmm.train.callbacks import SkipAccounting, Throughput
from lmm.train.throughput import FlopCounter


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
    """Trains the LMM for one stage (lmm.build.stage.Stage, applied to the model here): the
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
        # A model built on the meta device (strategy=fsdp) is filled after sharding from this
        # full state, which only rank 0 holds (lmm.build.meta); None elsewhere.
        self.initial_state: dict | None = None
        self.host_bytes_at_build: int | None = None  # resident bytes before the model was built (train.py)
        self.skips = SkipAccounting(max_skip_rate, skip_check_after)
        self.throughput = Throughput(FlopCounter.from_model(model))

    def configure_callbacks(self) -> list[L.Callback]:
        """Skip accounting before throughput: a step stopped by the skip rate is not counted."""
        return [self.skips, self.throughput]

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

    def _agree_on_loss(self, loss: torch.Tensor) -> None:
        """A non-finite loss on any rank stops every rank before the backward."""
        finite = self.trainer.strategy.all_gather(torch.isfinite(loss.detach()).long().reshape(1)).reshape(
            -1
        )  # [world]
        bad = ranks_where(finite == 0)
        if bad:
            raise AgreedStop(
                f"non-finite loss on rank(s) {bad} at step {self.trainer.global_step}: lower the learning "
                "rate, check the data, or train in bf16 instead of fp16"
            )

    def _placeholder_batch(self, batch: Batch) -> Batch:
        """A rank whose samples were all skipped still runs a forward (and backward) through
        the same modules as the others, on two pad tokens weighted 0 (see training_step)."""
        pad = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        return Batch(
            input_ids=pad, labels=torch.tensor([[-100, 0]], device=self.device), attention_mask=torch.ones_like(pad)
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # SkipAccounting has agreed on this batch's skips and placeholders with every rank.
        if not batch.rows:
            # Every sample of this rank's share was skipped. The step is not skipped: the other
            # ranks' samples train and this rank adds a zero gradient (skipping would leave DDP's
            # accumulated gradients unsynchronised and FSDP's collectives unmatched).
            loss = self(self._placeholder_batch(batch)).loss * 0.0
            self._agree_on_loss(loss)
            return loss
        loss = self(batch).loss
        self._agree_on_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.rows)
        for group in self.optimizers().param_groups:
            self.log(f"train/lr/{group.get('name', 'all')}", group["lr"], batch_size=1)
        return loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if getattr(self, "_resumed_rng", None) is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the parameters this stage trains: all a checkpoint holds of the model."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen weights are not saved: a resumed run rebuilds them from their source (pretrained
        # weights, stage.init_from, or the seeded random init), as the run did when it started.
        if "state_dict" in checkpoint:  # absent on ranks that write no file
            trainable = self.trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["lmm_rng"] = gather_objects(
            rng_state()
        )  # every rank's (dropout, LoRA dropout): one file holds them all

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # a single-file checkpoint: exactly the trainable parameters
            saved, trainable = set(checkpoint["state_dict"]), self.trainable_keys()
            if saved != trainable:
                raise ValueError(
                    f"the checkpoint does not hold this stage's trainable parameters (missing "
                    f"{sorted(trainable - saved)[:3]}, unexpected {sorted(saved - trainable)[:3]}): "
                    "was it written by another stage or model? force=true starts the run over"
                )
        states = checkpoint.get("lmm_rng") or []
        # Applied at the first training batch: the DataLoader draws its seed from the RNG when it
        # starts, which an uninterrupted run did before step 1, not at this step.
        self._resumed_rng = states[self.global_rank] if len(states) == self.trainer.world_size else None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if not batch.rows:  # the same forward as the other ranks (FSDP all-gathers), not logged
            self(self._placeholder_batch(batch))
            return
        self.log("val/loss", self(batch).loss, prog_bar=True, batch_size=batch.rows)

    def optimizer(self) -> torch.optim.AdamW:
        """AdamW over the trainable parameters (as sharded, if they are), one group per component:
        LLaVA's LoRA recipe gives the connector its own lr. lmm.analysis.simulate builds the same one."""
        groups = []
        for name in COMPONENTS:
            params = [p for p in getattr(self.model, name).parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": self.optim.component_lr.get(name, self.optim.lr), "name": name})
        optim = self.optim
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas)

    def configure_optimizers(self):
        optimizer, optim = self.optimizer(), self.optim
        total = int(self.trainer.max_steps)
        if total <= 0:
            raise ValueError("trainer.max_steps must be set: training streams are infinite (resampled shards)")
        warmup = max(1, round(optim.warmup_ratio * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
