"""Benchmarks that measure lmm against what users would run instead, side by side in one run."""

from __future__ import annotations

import importlib
import json
import platform
import sys
from pathlib import Path

import torch

# `lmm bench NAME` (and `make bench-NAME`) -> lmm.bench.<module>.main
BENCHMARKS = ("data", "eval", "train-step", "packing", "straggler", "data-scale", "loss", "mfu")


def main(argv: list[str]) -> dict:
    """`lmm bench NAME [options]`: one benchmark's main() with the options."""
    if not argv or argv[0] not in BENCHMARKS:
        sys.exit(f"usage: lmm bench NAME [options]   (NAME: {', '.join(BENCHMARKS)}; lmm bench NAME --help)")
    sys.argv = [f"lmm bench {argv[0]}", *argv[1:]]
    return importlib.import_module(f"lmm.bench.{argv[0].replace('-', '_')}").main(argv[1:])


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.processor() or 'cpu'}"


def save_result(result: dict, out: str | Path, argv: list[str] | None) -> dict:
    """Add the machine and the command that reproduces the run, write one benchmark's result as
    JSON (experiments/bench/<name>.json) and return it."""
    result = {
        **result,
        "machine": machine(),
        "command": f"lmm bench {result['benchmark'].replace('_', '-')} " + " ".join(argv or []),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


class NothingMeasured(RuntimeError):
    """A side of a benchmark did no work: no rate or ratio may be printed for it."""


def checked_ratio(ours: float, baseline: float, work: dict[str, int | float]) -> float:
    """ours / baseline, only when every side did real work (`work`: each side's count of answers,
    samples or tokens); NothingMeasured names the side that measured nothing."""
    empty = [side for side, amount in work.items() if not amount or amount <= 0]
    if empty or not ours or not baseline:
        raise NothingMeasured(f"no ratio: {', '.join(empty) or 'a rate'} measured nothing ({work})")
    return ours / baseline
