"""A per-GPU memory estimate for training under FSDP (what `task=describe` prints).

Sharded over the data-parallel ranks: parameters (trainable ones in their load dtype, frozen ones
in the compute dtype, as lmm.train.strategy holds them), gradients and AdamW's
two moments for the trainable ones. Not sharded: the all-gathered parameters of the largest
FSDP unit in compute dtype (×2: the next unit is prefetched), and the activations. A decoder
layer keeps 26·s·b·h + 8·s·b·i bytes for its backward (h: width, i: MLP width; SwiGLU's gate,
up, activation and product are the 8·s·b·i, and the rest, Llama's fp32 RMSNorm upcasts
included, was measured with lmm.analysis.simulate on Vicuna-13B, where Korthikanti et al.'s GPT figure
of 34·s·b·h falls 30% short), a frozen one (LLaVA's pretrain) 20·s·b·h + 6·s·b·i; under activation checkpointing
only its 2·s·b·h-byte input
(plus one layer being recomputed). The loss: with model.loss=plain the fp32 logits with their
gradient, 2·4·s·b·V; with model.loss=fused (lmm.model.loss) one chunk of logits (CHUNK_LOGITS in
the compute dtype and in fp32), the hidden states' gradient made in the forward (s·b·h in the
compute dtype) and, when the LLM trains, the head's fp32 gradient (4·V·h), whatever s·b. SDPA's
kernels never store the s×s score matrix. Worst case: every sequence at data.max_length
(LLaVA's pretrain samples are ~650 tokens, so the real need is far lower). For planning only:
`task=simulate` measures the step on fake tensors, and training records peak_memory_bytes in
results.json.
"""

from __future__ import annotations

from omegaconf import DictConfig

from lmm.model.lmm import LMM
from lmm.model.loss import CHUNK_LOGITS
from lmm.train.strategy import decoder_layers

GIB = 1024**3


def fsdp_memory_estimate(model: LMM, cfg: DictConfig, world: int) -> dict[str, float]:
    """Bytes per GPU by kind, and their total, for `world` data-parallel ranks."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    compute_bytes = 2 if cfg.strategy.get("param_dtype", "bfloat16") in ("bfloat16", "float16") else 4
    layers = decoder_layers(model.llm)
    largest_unit = max(
        [sum(p.numel() for p in layer.parameters()) for layer in layers]
        + [sum(p.numel() for p in block.parameters()) for block in model.vision.blocks()]
    )
    config = model.llm.config
    s, b, h, n_layers = int(cfg.data.max_length), int(cfg.data.batch_size), config.hidden_size, len(layers)
    i = config.intermediate_size
    llm_trains = any(p.requires_grad for p in model.llm.parameters())
    # A frozen layer's linears need no saved inputs (their weights get no gradient): 6·h + 2·i fewer.
    full_layer = (26 * h + 8 * i if llm_trains else 20 * h + 6 * i) * s * b
    gradients_flow = llm_trains or any(p.requires_grad for p in model.connector.parameters())
    if not gradients_flow:
        activations = full_layer  # nothing to keep for a backward
    elif cfg.get("activation_checkpointing"):
        activations = n_layers * 2 * s * b * h + full_layer
    else:
        activations = n_layers * full_layer
    units = [*layers, *model.vision.blocks(), model.connector]
    trainable_unit = max([sum(p.numel() for p in unit.parameters() if p.requires_grad) for unit in units], default=0)
    reduce_bytes = 2 if cfg.strategy.get("reduce_dtype", "float32") in ("bfloat16", "float16") else 4
    estimate = {
        # trainable parameters in their load dtype (fp32 master weights), frozen ones in the compute dtype
        "parameters (sharded)": sum(
            p.numel() * (p.element_size() if p.requires_grad else compute_bytes) for p in params
        )
        / world,
        "gradients (sharded)": sum(p.numel() * p.element_size() for p in trainable) / world,
        "AdamW moments (sharded)": 2 * sum(p.numel() * p.element_size() for p in trainable) / world,
        "gathered units (×2 prefetch)": 2 * largest_unit * compute_bytes,
        "activations": activations,
        "loss": loss_bytes(model, s * b, compute_bytes, llm_trains),
        # the backward of one layer (its recomputed activations and their gradients), the largest
        # trainable unit's unsharded gradient being reduce-scattered, and the checkpointed layer inputs still waiting
        "backward working set": (
            full_layer
            + trainable_unit * reduce_bytes
            + (n_layers * 2 * s * b * h if cfg.get("activation_checkpointing") else 0)
        )
        if gradients_flow
        else 0,
    }
    # Peak: the forward's end (activations and the loss's tensors live), or the backward's (the
    # sharded gradients growing beside one layer's working set); under gradient accumulation the
    # sharded gradients stay live through every forward. lmm.analysis.simulate measures the same on fake tensors
    # (tested).
    forward = estimate["activations"] + estimate["loss"]
    backward = estimate["gradients (sharded)"] + estimate["backward working set"]
    accumulating = accumulation_steps(cfg, world) > 1
    estimate["total"] = (
        estimate["parameters (sharded)"]
        + estimate["AdamW moments (sharded)"]
        + estimate["gathered units (×2 prefetch)"]
        + max(forward + (estimate["gradients (sharded)"] if accumulating else 0), backward)
    )
    return estimate


def loss_bytes(model: LMM, tokens: int, compute_bytes: int, head_trains: bool) -> float:
    """What the loss holds at its peak for `tokens` positions (all labelled: the worst case)."""
    vocabulary, width = model.llm.config.vocab_size, model.llm.config.hidden_size
    if model.loss_path == "plain":
        return 2 * 4 * tokens * vocabulary  # the fp32 logits and their gradient
    return (
        CHUNK_LOGITS * (4 + compute_bytes)
        + tokens * width * compute_bytes
        + (4 * vocabulary * width if head_trains else 0)
    )


def accumulation_steps(cfg: DictConfig, world: int) -> int:
    from lmm.run.plan import accumulation

    return accumulation(
        cfg.stage.get("global_batch_size"),
        int(cfg.data.batch_size),
        world,
        int(cfg.trainer.get("accumulate_grad_batches", 1)),
    )
