"""Benchmarks that measure lmm against what users would run instead, side by side in one run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.processor() or 'cpu'}"


def save_result(result: dict, out: str | Path) -> dict:
    """Write one benchmark's result as JSON (experiments/bench/<name>.json) and return it."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
