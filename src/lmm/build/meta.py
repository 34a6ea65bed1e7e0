"""Build once, hold a shard: the model is built on the meta device on every rank, sharded,
then filled from one reader (rank 0), which broadcasts each tensor in turn.

Under FSDP no rank but 0 ever holds the whole model, and rank 0 holds it in host memory only
while it is broadcast. Buffers are built for real (they are small, and some, like rotary
tables, are computed at construction and are not in the state dict).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from accelerate import init_empty_weights
from torch import nn


@contextmanager
def parameters_on_meta():
    """Create parameters on the meta device (no memory, no init work); buffers stay real."""
    with init_empty_weights(include_buffers=False):
        yield


def on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def materialize(module: nn.Module, device: torch.device, full_state: dict[str, torch.Tensor] | None) -> None:
    """Allocate the (sharded) parameters of `module` on `device` and fill them from rank 0's
    `full_state` (None on the other ranks): a collective, every rank calls it. Rank 0's tensors
    are cast to each parameter's dtype first (frozen parts travel in the compute dtype)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    buffers = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
    module.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
    if full_state is not None:
        dtypes = {name: p.dtype for name, p in module.named_parameters()}
        full_state = {k: v.to(dtypes.get(k, v.dtype)) for k, v in full_state.items()}
    set_model_state_dict(
        module, full_state or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )


def host_memory() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process, from /proc (0, 0 where there is none)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    except OSError:
        return 0, 0
    kib = lambda key: int(fields[key].split()[0]) * 1024  # noqa: E731
    return kib("VmRSS"), kib("VmHWM")


def reset_peak_host_memory() -> None:
    """Start VmHWM again from the current resident size (Linux; a no-op elsewhere)."""
    if os.path.exists("/proc/self/clear_refs"):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
