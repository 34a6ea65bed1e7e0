"""A per-GPU memory estimate for training under FSDP (what `task=describe` prints).

Sharded over the data-parallel ranks: parameters (trainable ones in their load dtype, frozen ones
in the compute dtype, as lmm.train.strategy holds them), gradients and AdamW's
two moments for the trainable ones. Not sharded: the all-gathered parameters of the largest
FSDP unit in compute dtype (×2: the next unit is prefetched), and the activations. Activations
follow Korthikanti et al. (2022) for a decoder layer, 34·s·b·h bytes in 16-bit,
or only the 2·s·b·h-byte layer input under activation checkpointing (plus one layer being
recomputed), and the fp32 logits with their gradient, 2·4·s·b·V. The attention-score term
(5·a·s/h) is left out: SDPA's flash and memory-efficient kernels never store the s×s matrix.
Worst case: every sequence at data.max_length (LLaVA's pretrain samples are ~650 tokens, so
the real need is far lower). For planning only; the measurement is peak_memory_bytes in
results.json.
"""

from __future__ import annotations

from omegaconf import DictConfig

from lmm.model.lmm import LMM
from lmm.train.strategy import decoder_layers

GIB = 1024**3


def fsdp_memory_estimate(model: LMM, cfg: DictConfig, world: int) -> dict[str, float]:
    """Bytes per GPU by kind, and their total, for `world` data-parallel ranks."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    compute_bytes = 2 if cfg.strategy.get("param_dtype", "bfloat16") in ("bfloat16", "float16") else 4
    layers = decoder_layers(model.llm)
    largest_unit = max([sum(p.numel() for p in layer.parameters()) for layer in layers] +
                       [sum(p.numel() for p in block.parameters()) for block in model.vision.blocks()])
    config = model.llm.config
    s, b, h, n_layers = int(cfg.data.max_length), int(cfg.data.batch_size), config.hidden_size, len(layers)
    full_layer = 34 * s * b * h
    gradients_flow = any(p.requires_grad for p in [*model.connector.parameters(), *model.llm.parameters()])
    if not gradients_flow:
        activations = full_layer  # nothing to keep for a backward
    elif cfg.get("activation_checkpointing"):
        activations = n_layers * 2 * s * b * h + full_layer
    else:
        activations = n_layers * full_layer
    estimate = {
        # trainable parameters in their load dtype (fp32 master weights), frozen ones in the compute dtype
        "parameters (sharded)": sum(p.numel() * (p.element_size() if p.requires_grad else compute_bytes) for p in params) / world,
        "gradients (sharded)": sum(p.numel() * p.element_size() for p in trainable) / world,
        "AdamW moments (sharded)": 2 * sum(p.numel() * p.element_size() for p in trainable) / world,
        "gathered units (×2 prefetch)": 2 * largest_unit * compute_bytes,
        "activations": activations,
        "logits + gradient (fp32)": 2 * 4 * s * b * config.vocab_size,
    }
    estimate["total"] = sum(estimate.values())
    return estimate
