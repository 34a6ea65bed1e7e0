"""From one measured micro-step to other world sizes: memory, step time, scaling efficiency,
and the largest per-device batch that fits a GPU.

The global batch (stage.global_batch_size) is the invariant, as in training (lmm.run.plan):
at W GPUs each rank takes global/W samples per optimizer step, as micro-batches of the largest
per-device batch that divides them, is at most data.batch_size and fits. From the measurement:

    memory(W, b)  = sharded state × W₀/W   (parameters, gradients, AdamW moments at the peak)
                  + unsharded buffers      (gathered units, collective buffers: fixed per rank)
                  + batch-sized bytes × b/b₀   (activations, backward temporaries, inputs)
    compute(W)    = accumulation × FLOPs(b) / (bf16 peak × mfu)
    comm(W)       = accumulation × Σ wire bytes / (bus bandwidth × bus efficiency)
                    wire bytes per rank: (W−1)/W × size for all-gather and reduce-scatter,
                    2(W−1)/W × size for all-reduce (ring algorithms); the sizes are per
                    micro-step and do not depend on W (FSDP gathers whole units)
    step(W)       = max(compute, comm)      FSDP overlaps its collectives with compute

A GPU "fits" when memory × (1 + allocator_overhead) + context_gib ≤ its memory. Efficiency is
samples/s per GPU relative to the smallest world size in the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lmm.analysis.simulate.fake_step import StepMeasurement
from lmm.analysis.simulate.hardware import GIB, GPU


@dataclass(frozen=True)
class Allowance:
    allocator_overhead: float
    context_gib: float
    mfu: float
    bus_efficiency: float

    def device_bytes(self, tensor_bytes: float) -> float:
        """What the device needs for `tensor_bytes` of live tensors."""
        return tensor_bytes * (1 + self.allocator_overhead) + self.context_gib * GIB


def predicted_peak(m: StepMeasurement, world: int, batch: int, accumulating: bool = False) -> float:
    """Tensor bytes per rank at `world` GPUs and `batch` samples per micro-step (see the module).
    `accumulating`: the sharded gradients are live throughout (gradient accumulation)."""
    sharded = m.sharded_at_peak
    if accumulating and not m.accumulating:
        sharded += m.gradients - m.peak_breakdown.get("Sharded Grad", 0)
    return sharded * m.world / world + m.fixed_at_peak + m.activations * batch / m.per_device_batch


def divisors_descending(n: int, at_most: int) -> list[int]:
    return [b for b in range(min(n, at_most), 0, -1) if n % b == 0]


def largest_fitting_batch(
    m: StepMeasurement, world: int, per_rank: int, at_most: int, memory_bytes: float, allowance: Allowance
) -> int | None:
    """The largest micro-batch that divides the rank's `per_rank` samples, is ≤ `at_most` and fits."""
    for batch in divisors_descending(per_rank, at_most):
        if allowance.device_bytes(predicted_peak(m, world, batch, per_rank > batch)) <= memory_bytes:
            return batch
    return None


def wire_bytes(m: StepMeasurement, world: int) -> float:
    """Bytes each rank sends in one micro-step at `world` ranks (ring algorithms)."""
    ring = (world - 1) / world
    sizes = {kind: sum(parts.values()) for kind, parts in m.collectives.items()}
    return ring * (sizes.get("all_gather", 0) + sizes.get("reduce_scatter", 0) + 2 * sizes.get("all_reduce", 0))


@dataclass
class ScalePoint:
    world: int
    gpu: str
    per_device_batch: int | None  # None: no batch fits (or the global batch cannot be split)
    accumulation: int | None
    peak_gib: float | None  # tensor bytes per rank
    device_gib: float | None  # with the allocator and context allowance
    compute_s: float | None
    comm_s: float | None
    step_s: float | None
    samples_per_s: float | None
    efficiency: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def scale_point(
    m: StepMeasurement,
    world: int,
    global_batch: int,
    max_batch: int,
    gpu_name: str,
    gpu: GPU,
    allowance: Allowance,
    memory_bytes: float | None = None,
) -> ScalePoint:
    """The step at `world` GPUs of `gpu`: the largest batch that fits its memory (or `memory_bytes`)."""
    empty = dict(
        per_device_batch=None,
        accumulation=None,
        peak_gib=None,
        device_gib=None,
        compute_s=None,
        comm_s=None,
        step_s=None,
        samples_per_s=None,
    )
    if global_batch % world:
        return ScalePoint(
            world, gpu_name, **empty, note=f"global batch {global_batch} is not a multiple of {world} GPUs"
        )
    per_rank = global_batch // world
    memory = memory_bytes if memory_bytes is not None else gpu.memory_gib * GIB
    batch = largest_fitting_batch(m, world, per_rank, max_batch, memory, allowance)
    if batch is None:
        need = allowance.device_bytes(predicted_peak(m, world, 1, per_rank > 1)) / GIB
        return ScalePoint(
            world, gpu_name, **empty, note=f"does not fit: {need:.1f} GiB at batch 1 > {memory / GIB:.1f}"
        )
    accumulation = per_rank // batch
    peak = predicted_peak(m, world, batch, accumulation > 1)
    flops = m.flops * batch / m.per_device_batch  # FLOPs are linear in the samples of one length
    compute = accumulation * flops / (gpu.bf16_tflops * 1e12 * allowance.mfu)
    comm = accumulation * wire_bytes(m, world) / (gpu.bus_bytes_per_s(world) * allowance.bus_efficiency)
    step = max(compute, comm)
    return ScalePoint(
        world,
        gpu_name,
        batch,
        accumulation,
        peak / GIB,
        allowance.device_bytes(peak) / GIB,
        compute,
        comm,
        step,
        global_batch / step,
        note="communication-bound" if comm > compute else "",
    )


def scaling_table(
    m: StepMeasurement, worlds: list[int], global_batch: int, max_batch: int, gpus: dict[str, GPU], allowance: Allowance
) -> list[ScalePoint]:
    """Every world size on every GPU type, with efficiency relative to each type's first feasible world."""
    points = []
    for name, gpu in gpus.items():
        rows = [scale_point(m, w, global_batch, max_batch, name, gpu, allowance) for w in worlds]
        base = next((r for r in rows if r.samples_per_s), None)
        for r in rows:
            if r.samples_per_s and base:
                r.efficiency = (r.samples_per_s / r.world) / (base.samples_per_s / base.world)
        points += rows
    return points
