"""One training micro-step of the configured model on a fake world: lmm's own sharding, measured.

The model is built on the meta device inside torch's FakeTensorMode (tensors with shapes and
dtypes but no storage), given its stage (LMMModule: freezing, LoRA, activation checkpointing),
sharded by the configured strategy's own `shard` (FSDP2 units, mixed-precision policy, frozen
parts in the compute dtype) on a fake process group of `world` ranks, and run as rank 0 for one
forward, backward, gradient clipping and AdamW step under Lightning's autocast. torch's
FSDPMemTracker records every tensor by kind; the collectives are counted as they are issued.

Fidelity: the tensors are CPU fake tensors (the autograd engine needs a real GPU for fake CUDA
tensors), so attention takes SDPA's CPU flash kernel, which like the GPU kernels never stores the
s×s score matrix, and autocast follows its CPU op lists. Byte counts are tensor bytes: the CUDA
caching allocator's fragmentation and the CUDA context come on top (lmm.analysis.simulate.scaling adds
an allowance). The AdamW state exists before the measured step (as from step 2 on), and under
gradient accumulation the sharded gradients are live during the forward (as from micro-step 2).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmm.analysis.simulate.collectives import CollectiveCounter
from lmm.build.model import build_model
from lmm.build.stage import stage_of
from lmm.data.collate import Batch
from lmm.train.module import LMMModule
from lmm.train.strategy import FSDP2Strategy
from lmm.train.throughput import FlopCounter

MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# FSDPMemTracker's kinds: what shards over the ranks, and what grows with the batch.
SHARDED = ("Sharded Param", "Sharded Grad", "OptState")
BATCH_SIZED = ("Activation", "Temp", "Inputs")


@dataclass
class StepMeasurement:
    """Rank 0's bytes and work in one micro-step at `per_device_batch` samples of `sample_lengths`."""

    world: int
    per_device_batch: int
    sample_lengths: list[int]
    activation_checkpointing: bool
    accumulating: bool  # sharded gradients live during the forward (gradient accumulation)
    parameter_count: int  # parameters this rank holds (its shards)
    parameters: (
        int  # bytes of this rank's parameter shards (trainable in their load dtype, frozen in the compute dtype)
    )
    gradients: int  # bytes of the sharded gradients
    optimizer: int  # bytes of AdamW's state (two moments and a step count per parameter)
    peak: int  # tracked tensor bytes at the step's peak
    peak_breakdown: dict[str, int]  # FSDPMemTracker's kinds at the peak
    collectives: dict[str, dict[str, int]]  # {kind: {component: full-size bytes}} in this micro-step
    flops: float  # model FLOPs of this rank's micro-batch (lmm.train.throughput)

    @property
    def activations(self) -> int:
        """Bytes that scale with the batch at the peak: activations, backward temporaries, inputs."""
        return sum(self.peak_breakdown.get(kind, 0) for kind in BATCH_SIZED)

    @property
    def sharded_at_peak(self) -> int:
        """Bytes at the peak that shard over the ranks: parameters, gradients, AdamW state."""
        return sum(self.peak_breakdown.get(kind, 0) for kind in SHARDED)

    @property
    def fixed_at_peak(self) -> int:
        """The rest of the peak: gathered units and collective buffers (fixed per rank)."""
        return self.peak - self.sharded_at_peak - self.activations


@contextmanager
def fake_world(world: int):
    """A fake process group of `world` ranks with this process as rank 0, and its 1-D device mesh
    named as lmm's strategy expects."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("task=simulate needs a process without a process group (run it as one process)")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


@contextmanager
def tracker_paused(tracker):
    """Leave the tracker's dispatch mode for a block (the other modes stay on)."""
    from torch.utils._python_dispatch import _pop_mode_temporarily

    with _pop_mode_temporarily() as mode:
        assert mode is tracker, "the memory tracker must be the innermost mode here"
        yield


def fake_batch(model, lengths: list[int]) -> Batch:
    """One image and `length` tokens per sample (the image's placeholders included), padded to
    the longest; the answer is the text after the image (the loss counts it)."""
    n, size = model.num_image_tokens, model.vision.image_size
    rows, longest = len(lengths), max(lengths)
    input_ids = torch.ones((rows, longest), dtype=torch.long)  # [B, T]
    input_ids[:, 1 : 1 + n] = model.image_token_id
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, : 1 + n] = -100
    pixel_values = torch.zeros((rows, 3, size, size))  # [I, 3, S, S]
    instruction = torch.ones((rows, 8), dtype=torch.long) if model.connector.uses_instruction else None
    return Batch(
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        instruction_ids=instruction,
        instruction_mask=None if instruction is None else torch.ones_like(instruction),
        sample_lengths=list(lengths),
    )


def sharded_bytes(tensors) -> int:
    """Bytes of the local shards (a DTensor's local tensor; a plain tensor as is)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def state_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This rank's parameter, gradient and optimizer-state bytes (what a real run allocates too:
    tests/train compare the two)."""
    params = list(module.parameters())
    states = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {
        "parameters": sharded_bytes(params),
        "gradients": sharded_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": sharded_bytes(states),
    }


def fsdp_strategy(cfg: DictConfig) -> FSDP2Strategy:
    strategy = instantiate(cfg.strategy)
    if not isinstance(strategy, FSDP2Strategy):
        raise ValueError(
            f"task=simulate simulates strategy=fsdp (FSDP2); this config has "
            f"{cfg.strategy.get('_target_')}: add strategy=fsdp"
        )
    return strategy


def simulate_step(
    cfg: DictConfig,
    world: int,
    per_device_batch: int,
    sample_lengths: list[int],
    activation_checkpointing: bool,
    accumulating: bool,
) -> StepMeasurement:
    """Measure one micro-step of `per_device_batch` samples (lengths cycled from `sample_lengths`)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    strategy = fsdp_strategy(cfg)
    lengths = [sample_lengths[i % len(sample_lengths)] for i in range(per_device_batch)]
    precision = str(cfg.trainer.get("precision", "32-true"))
    autocast = (
        torch.autocast("cpu", dtype=MIXED[precision], cache_enabled=False) if precision in MIXED else nullcontext()
    )
    clip = cfg.trainer.get("gradient_clip_val")
    with fake_world(world) as mesh, FakeTensorMode():
        with torch.device("meta"):
            model = build_model(cfg, image_token_id=-1, load_weights=False)
        model.check_placeholders = False  # fake tensors hold no values to count
        model.loss_all_positions = True  # nor labels to select by (model.loss=fused projects every position, in chunks)
        module = LMMModule(model, stage_of(cfg), activation_checkpointing=activation_checkpointing)
        flops = FlopCounter.from_model(module.model).step_flops(lengths, images=len(lengths))
        strategy.shard(module.model, mesh)
        module.model.to_empty(device="cpu")
        module.train()
        trainable = [p for p in module.model.parameters() if p.requires_grad]
        optimizer = module.optimizer()
        for p in trainable:  # AdamW allocates its state at its first step: from step 2 on it exists
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=not accumulating)
        batch = fake_batch(module.model, lengths)
        tracker = FSDPMemTracker(module.model, optimizer)
        tracker.track_inputs((batch.input_ids, batch.labels, batch.attention_mask, batch.pixel_values))
        counter = CollectiveCounter(f"{type(module).__name__}.model")
        with counter, tracker:  # the tracker innermost (tracker_paused pops it)
            with autocast:
                loss = module(batch).loss
            loss.backward()
            state = state_bytes(module.model, optimizer)
            with tracker_paused(tracker):
                # Clipping allocates one norm per tensor; the tracker would count its in-place
                # scaling of each DTensor gradient at the gradient's global size.
                if clip:
                    torch.nn.utils.clip_grad_norm_(trainable, float(clip))
            optimizer.step()
            optimizer.zero_grad()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
        count = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in module.model.parameters())
    breakdown = {str(getattr(kind, "value", kind)): int(n) for kind, n in peak.items() if str(kind) != "Total"}
    return StepMeasurement(
        world=world,
        per_device_batch=per_device_batch,
        sample_lengths=lengths,
        activation_checkpointing=activation_checkpointing,
        accumulating=accumulating,
        parameter_count=count,
        parameters=state["parameters"],
        gradients=state["gradients"],
        optimizer=state["optimizer"],
        peak=int(peak["Total"]),
        peak_breakdown=breakdown,
        collectives=counter.by_kind(),
        flops=flops,
    )
