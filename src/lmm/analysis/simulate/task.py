"""task=simulate: measure the configured stage on a fake world, print what a user asks before
renting it, and write simulate.json, simulate.md and scaling.png.

    lmm train experiment=llava15_13b task=simulate trainer.devices=8 trainer.num_nodes=1
    lmm train experiment=llava15_13b task=simulate simulate.gpu_memory_gib=40

The configured world (devices × nodes) is simulated with and without activation checkpointing;
the scaling table extrapolates to `simulate.world_sizes` (lmm.analysis.simulate.scaling).
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from lmm.analysis.simulate.fake_step import StepMeasurement, fsdp_strategy, simulate_step
from lmm.analysis.simulate.hardware import GIB
from lmm.analysis.simulate.scaling import (
    Allowance,
    ScalePoint,
    divisors_descending,
    predicted_peak,
    scaling_table,
    wire_bytes,
)
from lmm.run.plan import accumulation, world_size

SIMULATION = "simulate.json"
SIMULATION_TABLES = "simulate.md"
SCALING_PLOT = "scaling.png"


def positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}={value!r}: must be a number > 0")
    return value


def sample_lengths(cfg: DictConfig, image_tokens: int) -> list[int]:
    lengths = list(cfg.simulate.sample_lengths or [int(cfg.data.max_length)])
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or not image_tokens + 2 <= n <= int(cfg.data.max_length):
            raise ValueError(
                f"simulate.sample_lengths holds {n!r}: each must be a whole number of tokens from "
                f"{image_tokens + 2} (the image's {image_tokens} tokens and 2 more) to "
                f"data.max_length={cfg.data.max_length}"
            )
    return lengths


def memory_rows(measured: dict[bool, StepMeasurement], allowance: Allowance) -> list[tuple[str, list[float]]]:
    """(kind, GiB per rank for AC on, AC off) rows of the memory table."""
    order = [True, False]
    rows = [
        ("parameters (sharded)", [measured[ac].parameters for ac in order]),
        ("gradients (sharded)", [measured[ac].gradients for ac in order]),
        ("AdamW state (sharded)", [measured[ac].optimizer for ac in order]),
        ("activations at the peak", [measured[ac].activations for ac in order]),
        ("gathered units and buffers at the peak", [measured[ac].fixed_at_peak for ac in order]),
        ("total peak (tensors)", [measured[ac].peak for ac in order]),
        ("device memory needed", [allowance.device_bytes(measured[ac].peak) for ac in order]),
    ]
    return [(kind, [v / GIB for v in values]) for kind, values in rows]


def fit_answer(
    cfg: DictConfig,
    measured: dict[bool, StepMeasurement],
    world: int,
    global_batch: int,
    lengths: list[int],
    memory_gib: float,
    allowance: Allowance,
) -> str:
    """One line: the largest per-device batch that fits `memory_gib` (verified by simulating it),
    or the memory savers it needs."""
    memory = memory_gib * GIB
    per_rank = global_batch // world
    configured = bool(cfg.activation_checkpointing)
    for ac in [configured] + ([True] if not configured else []):
        m = measured[ac]
        for batch in divisors_descending(per_rank, per_rank):
            if allowance.device_bytes(predicted_peak(m, world, batch, per_rank > batch)) > memory:
                continue
            check = (
                m
                if batch == m.per_device_batch and (per_rank > batch) == m.accumulating
                else simulate_step(cfg, world, batch, lengths, ac, accumulating=per_rank > batch)
            )
            need = allowance.device_bytes(check.peak)
            if need <= memory:
                saver = " with activation_checkpointing=true" if ac and not configured else ""
                return (
                    f"fits {memory_gib:g} GiB on {world} GPUs: data.batch_size={batch} "
                    f"(accumulation {per_rank // batch}){saver}; "
                    f"simulated peak {check.peak / GIB:.1f} GiB of tensors, {need / GIB:.1f} GiB with the allocator "
                    "allowance"
                )
    m = measured[True]
    state = (m.parameters + m.gradients + m.optimizer) / GIB
    one = allowance.device_bytes(predicted_peak(m, world, 1, per_rank > 1)) / GIB
    wider = next(
        (
            w
            for w in cfg.simulate.world_sizes
            if w > world
            and global_batch % w == 0
            and allowance.device_bytes(predicted_peak(m, w, 1, global_batch // w > 1)) <= memory
        ),
        None,
    )
    more = f"shard over {wider} GPUs (trainer.devices × trainer.num_nodes), " if wider else ""
    return (
        f"does not fit {memory_gib:g} GiB on {world} GPUs at any batch: batch 1 with activation checkpointing needs "
        f"{one:.1f} GiB, of which parameters, gradients and AdamW state are {state:.1f}; {more}shorten "
        "data.max_length, "
        f"or train fewer parameters (stage=lora)"
    )


def markdown(
    cfg: DictConfig,
    world: int,
    plan: tuple[int, int, int],
    measured: dict[bool, StepMeasurement],
    points: list[ScalePoint],
    allowance: Allowance,
    answer: str | None,
) -> str:
    global_batch, per_device, accumulate = plan
    m = measured[bool(cfg.activation_checkpointing)]
    lines = [
        f"**{cfg.name}** (stage {cfg.stage.name}), simulated on {world} fake ranks: global batch {global_batch} = "
        f"{per_device} per device × {world} × {accumulate} accumulation, sequences of {max(m.sample_lengths)} tokens, "
        f"{m.parameter_count:,d} parameters per rank.",
        "",
        "| per rank (GiB) | activation checkpointing | no checkpointing |",
        "|---|---:|---:|",
    ]
    lines += [f"| {kind} | {on:.2f} | {off:.2f} |" for kind, (on, off) in memory_rows(measured, allowance)]
    lines += [
        "",
        f"Collectives per micro-step (full-size GiB; each rank sends (W−1)/W of it, all-reduce twice), "
        f"activation checkpointing {'on' if cfg.activation_checkpointing else 'off'}:",
        "",
        "| component | all-gather | reduce-scatter | all-reduce |",
        "|---|---:|---:|---:|",
    ]
    components = list(next(iter(m.collectives.values())))
    lines += [
        f"| {c} | "
        + " | ".join(f"{m.collectives[k][c] / GIB:.2f}" for k in ("all_gather", "reduce_scatter", "all_reduce"))
        + " |"
        for c in components
    ]
    lines += [
        "",
        f"Step time at {allowance.mfu:.0%} MFU, {allowance.bus_efficiency:.0%} of link bandwidth "
        "(per-device batch: the largest ≤ data.batch_size that fits the GPU):",
        "",
        "| GPU | GPUs | batch × accum. | memory GiB | compute s | comm. s | step s | samples/s | efficiency | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in points:
        if p.step_s is None:
            lines.append(f"| {p.gpu} | {p.world} | — | — | — | — | — | — | — | {p.note} |")
        else:
            lines.append(
                f"| {p.gpu} | {p.world} | {p.per_device_batch} × {p.accumulation} | {p.device_gib:.1f} | "
                f"{p.compute_s:.2f} | "
                f"{p.comm_s:.2f} | {p.step_s:.2f} | {p.samples_per_s:.1f} | {p.efficiency:.0%} | {p.note} |"
            )
    if answer:
        lines += ["", answer]
    return "\n".join(lines) + "\n"


def plot(points: list[ScalePoint], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, eff_ax) = plt.subplots(1, 2, figsize=(10, 4))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "d")]  # GPUs with equal figures (A100 40/80G) stay visible
    for index, gpu in enumerate(dict.fromkeys(p.gpu for p in points)):
        rows = [p for p in points if p.gpu == gpu and p.step_s is not None]
        line, marker = styles[index % len(styles)]
        for ax, values in ((time_ax, [p.step_s for p in rows]), (eff_ax, [p.efficiency for p in rows])):
            ax.plot([p.world for p in rows], values, linestyle=line, marker=marker, label=gpu)
    for ax, label in ((time_ax, "step time (s)"), (eff_ax, "scaling efficiency")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    time_ax.set_yscale("log")
    eff_ax.set_ylim(0, 1.1)
    eff_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def simulate(cfg: DictConfig) -> dict:
    sim = cfg.simulate
    fsdp_strategy(cfg)  # a one-line refusal before any work for strategy=auto/ddp
    if cfg.vision.get("image_aspect") == "anyres":
        raise ValueError(
            "task=simulate models one tower view per image; vision.image_aspect=anyres (several views, a count per "
            "image size) is not simulated: simulate the pad run and scale the vision work by the views per image "
            "(task=describe prints them)"
        )
    allowance = Allowance(
        float(positive(sim.allocator_overhead + 1, "simulate.allocator_overhead + 1") - 1),
        float(positive(sim.context_gib, "simulate.context_gib")),
        float(positive(sim.mfu, "simulate.mfu")),
        float(positive(sim.bus_efficiency, "simulate.bus_efficiency")),
    )
    world = world_size(cfg.trainer)
    per_device = int(positive(cfg.data.batch_size, "data.batch_size"))
    global_batch = cfg.stage.get("global_batch_size") or per_device * world * int(
        cfg.trainer.get("accumulate_grad_batches", 1)
    )
    accumulate = accumulation(global_batch, per_device, world, int(cfg.trainer.get("accumulate_grad_batches", 1)))
    worlds = [int(positive(w, "simulate.world_sizes[]")) for w in sim.world_sizes]
    gpus = {name: instantiate(spec) for name, spec in sim.gpus.items()}
    if sim.gpu_memory_gib is not None:
        positive(sim.gpu_memory_gib, "simulate.gpu_memory_gib")
    from lmm.analysis.describe import meta_model

    lengths = sample_lengths(cfg, meta_model(cfg).num_image_tokens)
    print(
        f"[lmm] simulating {cfg.name} ({cfg.stage.name}) on {world} fake ranks: one step at {per_device} per device "
        f"× {accumulate} accumulation, sequences of up to {max(lengths)} tokens, with and without activation "
        "checkpointing"
    )
    measured = {
        ac: simulate_step(cfg, world, per_device, lengths, ac, accumulating=accumulate > 1) for ac in (True, False)
    }
    m = measured[bool(cfg.activation_checkpointing)]
    points = scaling_table(m, worlds, global_batch, per_device, gpus, allowance)
    answer = (
        fit_answer(cfg, measured, world, global_batch, lengths, float(sim.gpu_memory_gib), allowance)
        if sim.gpu_memory_gib is not None
        else None
    )
    tables = markdown(cfg, world, (global_batch, per_device, accumulate), measured, points, allowance, answer)
    print(tables, end="")
    out = Path(sim.out or cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "world": world,
        "global_batch": global_batch,
        "per_device_batch": per_device,
        "accumulation": accumulate,
        "measured": {("checkpointing" if ac else "no_checkpointing"): vars(v) for ac, v in measured.items()},
        "wire_bytes_per_step": accumulate * wire_bytes(m, world),
        "scaling": [p.as_dict() for p in points],
        "fit": answer,
        "assumptions": {
            "mfu": allowance.mfu,
            "bus_efficiency": allowance.bus_efficiency,
            "allocator_overhead": allowance.allocator_overhead,
            "context_gib": allowance.context_gib,
            "gpus": {name: vars(g) for name, g in gpus.items()},
        },
    }
    (out / SIMULATION).write_text(json.dumps(result, indent=1))
    (out / SIMULATION_TABLES).write_text(tables)
    plot(points, f"{cfg.name}: global batch {global_batch}", out / SCALING_PLOT)
    print(f"[lmm] wrote {out / SIMULATION}, {out / SIMULATION_TABLES} and {out / SCALING_PLOT}")
    return result
