"""Decisions every rank takes together: each rank's facts about a step are gathered, so all
ranks skip, stop or go on alike, with the same message — never one rank raising while the
others wait in a collective until its timeout.

[Contract] Every collective here gets tensors on the module's device (NCCL has no CPU path)
and is called by every rank at the same point of the step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class AgreedStop(RuntimeError):
    """Raised on every rank at once, with the same message."""


def gather_rows(strategy, values: list[int | float], device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Every rank's `values` on every rank: [world, len(values)] (one all_gather)."""
    local = torch.tensor(values, dtype=dtype, device=device)
    return strategy.all_gather(local).reshape(-1, len(values))


def gather_objects(obj) -> list:
    """Every rank's picklable `obj` (for messages only, on the rare path that stops a run)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def ranks_where(flags: torch.Tensor) -> list[int]:
    """Indices of the ranks whose flag is set ([world] tensor)."""
    return [int(r) for r in torch.nonzero(flags).flatten().tolist()]
