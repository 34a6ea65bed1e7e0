"""Write a weights file (safetensors) atomically and readable as the umask says; read one back
only if it is the file that was written (its recorded sha256) and holds finite values.

safetensors creates its file mode 0600, so teammates on a shared cluster could not read a
run's weights; and a file written in place can be left half-written by a killed job. Here the
file is written under a temporary name, given the umask's mode, and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model
from torch import nn


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """`model`'s state as safetensors at `path` (shared tensors written once)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_model(model, str(partial))
    os.chmod(partial, 0o666 & ~current_umask())
    os.replace(partial, path)
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recorded_hash(path: str | Path, expected: str | None) -> None:
    """ValueError if `path` is not the file whose sha256 was recorded (nothing to check without a record)."""
    if expected and file_sha256(path) != expected:
        raise ValueError(
            f"{path} is not the file its run recorded when it finished (sha256 {expected[:12]}...): it is "
            "damaged or was replaced; restore it, or train the run again (force=true)"
        )


def read_weights(path: str | Path, expected_sha256: str | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A trained weights file's tensors, refused in one line when it does not match its recorded
    sha256, cannot be read, or holds NaN/inf (a damaged model is never scored or published)."""
    check_recorded_hash(path, expected_sha256)
    try:
        state = load_file(str(path), device=device)
    except Exception as e:  # a truncated or garbage file
        raise ValueError(
            f"{path} cannot be read as safetensors ({type(e).__name__}: {e}); restore it or train the run again"
        ) from None
    bad = [
        key for key, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ValueError(
            f"{path} holds NaN or infinite values in {len(bad)} tensor(s) (first: {bad[0]}); refusing a damaged model"
        )
    return state
