"""Throughput accounting: model FLOPs per step, MFU, and the run totals written to results.json.

FLOPs are counted from parameters (2 per parameter per token for a forward pass) plus the LLM's
attention scores (PaLM's convention, appendix B), per component and by what the stage trains:

    forward                      2·N per token          every component
    gradients w.r.t. inputs      2·N per token          when anything upstream trains (pretrain: the frozen LLM)
    gradients w.r.t. weights     2·N per token          when the component trains

so a frozen vision tower costs its forward only, a frozen LLM in LLaVA's pretrain stage costs
forward + backward-through-activations (4·N), and a trained one 6·N. The vision tower and the
connector see one token per patch, the LLM one per non-pad position. Embedding tables are
lookups, not matmuls, and are left out. These are model FLOPs (no recomputation from activation
checkpointing), so MFU is comparable across settings.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import torch

from lmm.model.lmm import LMM

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against
# torch.cuda.get_device_name(); the first matching entry wins.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
]


SIXTEEN_BIT = ("16-mixed", "bf16-mixed", "16-true", "bf16-true")  # Lightning's precision names


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's bf16 peak when training in 16-bit precision on a known GPU, else None."""
    if device.type != "cuda" or str(precision) not in SIXTEEN_BIT:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Peak memory of this process: allocated GPU memory, or the CPU's max resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def _matmul_parameters(module: torch.nn.Module, skip: set[int] = frozenset()) -> tuple[int, int]:
    """(all, trainable) parameter counts, leaving out the tensors in `skip` (embedding tables)."""
    total = trainable = 0
    for p in module.parameters():
        if id(p) in skip:
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


@dataclass
class FlopCounter:
    vision: tuple[int, int]  # (parameters, trainable)
    connector: tuple[int, int]
    llm: tuple[int, int]
    patches: int  # tokens each image brings to the tower and the connector
    llm_layers: int
    llm_width: int

    @classmethod
    def from_model(cls, model: LMM) -> "FlopCounter":
        """Count from the model as the stage left it (requires_grad set)."""
        config = model.llm.config
        embedding = model.llm.get_input_embeddings().weight
        tied = model.llm.get_output_embeddings()
        skip = {id(embedding)} - ({id(tied.weight)} if tied is not None and tied.weight is embedding else set())
        return cls(
            vision=_matmul_parameters(model.vision),
            connector=_matmul_parameters(model.connector),
            llm=_matmul_parameters(model.llm, skip),
            patches=model.vision.num_patches,
            llm_layers=config.num_hidden_layers,
            llm_width=config.hidden_size,
        )

    @staticmethod
    def _component(tokens: int, params: tuple[int, int], upstream_trains: bool) -> int:
        """2·N forward; 2·N input gradients when anything at or before it trains; 2·N_trainable
        weight gradients (LoRA: only its adapters). A partly trained vision tower is the exception:
        its gradients flow only through its trained (last) blocks, see step_flops."""
        total, trainable = params
        return tokens * (2 * total + (2 * total if upstream_trains or trainable else 0) + 2 * trainable)

    def step_flops(self, sample_lengths: list[int], images: int) -> float:
        """Model FLOPs of one training step: `sample_lengths` tokens per sample (attention is within a
        sample, packed or not), `images` images."""
        vision_params, vision_trainable = self.vision
        patch_tokens = images * self.patches
        vision = patch_tokens * (2 * vision_params + 4 * vision_trainable)
        upstream = vision_trainable > 0
        connector = self._component(patch_tokens, self.connector, upstream)
        upstream = upstream or self.connector[1] > 0
        llm = self._component(sum(sample_lengths), self.llm, upstream)
        gradients_flow = upstream or self.llm[1] > 0
        attention = sum(4 * self.llm_layers * self.llm_width * n * n for n in sample_lengths)  # forward QKᵀ and AV
        return float(vision + connector + llm + attention * (3 if gradients_flow else 1))  # no weights: 2× backward
