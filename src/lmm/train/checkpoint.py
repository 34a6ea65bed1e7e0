"""Checkpoints that are complete or absent (the Lightning callback that writes them, and finding the last).

`lmm consolidate` (lmm.commands.consolidate) merges a sharded one into one safetensors file.

A checkpoint is written under `<name>.partial` and renamed into place only when every rank has
finished; the previous one is kept as `<name>.old` until then. A run killed at any moment
therefore leaves at least one complete checkpoint, and `latest_checkpoint` never picks a
half-written one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

LAST = "last.ckpt"
DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint when all shards are saved
LIGHTNING_METADATA = "meta.pt"  # written by rank 0 after the shards (trainer state)


def is_complete(path: Path) -> bool:
    """A single-file checkpoint is a complete zip archive; a sharded one has both metadata files."""
    if path.is_dir():
        return (path / DCP_METADATA).is_file() and (path / LIGHTNING_METADATA).is_file()
    if path.is_file():
        import zipfile

        return zipfile.is_zipfile(path)
    return False


def unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (incomplete, not a checkpoint, refused by
    `weights_only`), or None. A single file is opened memory-mapped: nothing is read in full."""
    if not is_complete(path):
        return "missing, incomplete, or not a checkpoint"
    if path.is_file():
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a damaged archive, or a pickle that weights_only refuses
            return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return None
    return missing_shard(path)


def missing_shard(path: Path) -> str | None:
    """A sharded checkpoint's shard files, from its DCP metadata: each is there and holds every
    byte range the metadata places in it (a deleted or cut shard file), else why not."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(str(path)).read_metadata().storage_data
    except Exception as e:
        return f"its {DCP_METADATA} cannot be read ({type(e).__name__})"
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"shard file {name} is missing"
        if shard.stat().st_size < size:
            return f"shard file {name} has {shard.stat().st_size} bytes, its metadata needs {size}"
    return None


def resume_point(checkpoint_dir: Path, announce: bool = True) -> Path | None:
    """Where a run resumes: last.ckpt, or, when it cannot be read, the previous complete one
    (said in one line); None for a run with no checkpoint yet. A damaged last.ckpt with nothing
    good before it stops the run (ValueError saying how to start over) instead of silently
    starting at step 0. The same answer on every rank: nothing is moved or deleted here."""
    last, old = checkpoint_dir / LAST, checkpoint_dir / f"{LAST}.old"
    if not last.exists() and not old.exists():
        return None
    problem = unreadable(last)
    if problem is None:
        return last
    if unreadable(old) is None:
        if announce:
            print(
                f"[lmm] {last} cannot be resumed from ({problem}); resuming from the previous complete checkpoint {old}"
            )
        return old
    raise ValueError(
        f"{last} cannot be resumed from ({problem}) and no earlier checkpoint is complete; run the same "
        f"command with force=true to start this run over (or restore {last})"
    )


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint: last.ckpt, or the one it was replacing when a run died."""
    for candidate in (checkpoint_dir / LAST, checkpoint_dir / f"{LAST}.old"):
        if is_complete(candidate):
            return candidate
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def commit(partial: Path, target: Path) -> None:
    """Move a finished checkpoint into place; the old one is deleted only after the rename."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        _remove(old)
        os.replace(target, old)
    os.replace(partial, target)
    _remove(old)


class AtomicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes to `<path>.partial` and renames once all ranks are done."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        partial = Path(f"{filepath}.partial")
        if trainer.is_global_zero:
            _remove(partial)  # left by a run that died while writing
        trainer.strategy.barrier()
        super()._save_checkpoint(trainer, str(partial))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            commit(partial, Path(filepath))
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath
