"""Who this process is among the ranks, and the decisions every rank takes together.

Before a process group exists, `first_process` reads the launcher's environment; after, the
rank and world come from torch.distributed. The gathers let all ranks skip, stop or go on alike,
with the same message — never one rank raising while the others wait in a collective until its
timeout.

[Contract] Every collective here gets tensors on the module's device (NCCL has no CPU path)
and is called by every rank at the same point of the step.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

LAUNCHER_RANKS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


class AgreedStop(RuntimeError):
    """Raised on every rank at once, with the same message."""


def first_process() -> bool:
    """Whether this process is global rank 0 (the one that holds and writes the run directory),
    from the launcher's environment (torchrun, SLURM, Lightning's own children, a node of a
    multi-node launch), before any process group exists: only when every rank the environment
    names is 0 (a child Lightning starts inside an interactive SLURM shell inherits
    SLURM_PROCID=0 but has LOCAL_RANK=1)."""
    return all(int(os.environ[key]) == 0 for key in LAUNCHER_RANKS if os.environ.get(key, "").isdigit())


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, or not distributed: the process that writes files."""
    return rank_and_world()[0] == 0


def gather_rows(
    strategy, values: list[int | float], device: torch.device, dtype: torch.dtype = torch.long
) -> torch.Tensor:
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
