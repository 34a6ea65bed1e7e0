"""Write a weights file (safetensors) atomically and readable as the umask says.

safetensors creates its file mode 0600, so teammates on a shared cluster could not read a
run's weights; and a file written in place can be left half-written by a killed job. Here the
file is written under a temporary name, given the umask's mode, and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_model
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
