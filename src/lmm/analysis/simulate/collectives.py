"""Count the collectives of a step on a fake process group: kind, full tensor bytes, component.

A TorchDispatchMode sees every c10d op FSDP issues (all-gather of a unit's parameters,
reduce-scatter of its gradients, all-reduce of the gradient norm) before the fake process group
drops it. Each is attributed to the model component whose forward or backward is running
(torch's ModTracker); FSDP's backward prefetch issues a unit's all-gather one unit early, so at a
component boundary one unit's bytes can land on its neighbour.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.distributed._tools.mod_tracker import ModTracker
from torch.utils._python_dispatch import TorchDispatchMode

from lmm.model.lmm import COMPONENTS

ROOT = "root"  # the root FSDP unit: embeddings, final norm, LM head (and whatever is not in a unit)
KINDS = ("all_gather", "reduce_scatter", "all_reduce")


def collective_kind(op_name: str) -> str | None:
    """'all_gather', 'reduce_scatter', 'all_reduce', 'other' for a c10d op name; None otherwise."""
    name = op_name.replace("_", "").lower()
    if "allgather" in name:
        return "all_gather"
    if "reducescatter" in name:
        return "reduce_scatter"
    if "allreduce" in name:
        return "all_reduce"
    if "wait" in name or "barrier" in name:
        return None
    return "other"


def _tensor_bytes(value) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [value.numel() * value.element_size()]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _tensor_bytes(item)]
    return []


class CollectiveCounter(TorchDispatchMode):
    """Full-size bytes per (kind, component): an all-gather's output, a reduce-scatter's input,
    an all-reduce's tensor (the largest tensor of the call, which is that one in each case)."""

    def __init__(self, model_fqn: str):
        """`model_fqn`: the LMM's name in ModTracker's module names (e.g. "LMMModule.model")."""
        super().__init__()
        self.modules = ModTracker()
        self.prefix = model_fqn.split(".")
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)

    def component(self) -> str:
        for fqn in self.modules.parents:
            parts = fqn.split(".")
            n = len(self.prefix)
            if len(parts) > n and parts[:n] == self.prefix and parts[n] in COMPONENTS:
                return parts[n]
        return ROOT

    def __enter__(self):
        self.modules.__enter__()
        return super().__enter__()

    def __exit__(self, *args):
        super().__exit__(*args)
        self.modules.__exit__(*args)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in ("c10d", "_c10d_functional"):
            kind = collective_kind(func.__name__)
            sizes = _tensor_bytes(list(args)) + _tensor_bytes(list(kwargs.values()))
            if kind is not None and sizes:
                key = (kind, self.component())
                self.bytes[key] += max(sizes)
                self.calls[key] += 1
        return func(*args, **kwargs)

    def by_kind(self) -> dict[str, dict[str, int]]:
        """{kind: {component: bytes}} with every kind and component present (0 when none)."""
        table = {kind: {name: 0 for name in (*COMPONENTS, ROOT)} for kind in KINDS}
        for (kind, component), n in self.bytes.items():
            table.setdefault(kind, {name: 0 for name in (*COMPONENTS, ROOT)})[component] += n
        return table
