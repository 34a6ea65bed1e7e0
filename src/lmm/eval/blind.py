"""Blind controls (`eval.blind=true`): how much of a score needs the image.

Every benchmark is scored a second time with each image replaced by the tower's mean-colour
image, with the same prompts, the same visual-token count and the same decoding. Pixels reach
the tower normalised by its own mean and std, so the mean-colour image is all zeros there:
`blank_images` zeroes the tower's input and nothing else (AnyRes views, sizes and placeholder
counts are untouched, because they are fixed before the model runs).

The blind pass is benchmark `<name>.blind` (its metrics, its predictions/<name>.blind.jsonl),
and "needs vision" is `<name>.needs_vision/<metric>` = score − blind score, per metric and per
question type. Losses get a blind value but no difference (its sign would read the other way).
lmm.analysis.ablate pairs the two prediction files by question for the intervals (lmm.analysis.stats).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lmm.core.ranks import is_main_process
from lmm.eval.answer import write_jsonl

BLIND = ".blind"
NEEDS_VISION = ".needs_vision"
QUESTION_TYPE = "qtype"  # <benchmark>/qtype/<source>/<type>: one question type's score


@contextmanager
def blank_images(model: torch.nn.Module) -> Iterator[None]:
    """Every image the tower sees is its mean-colour image (zeros after normalisation), until exit."""

    def blank(module, args, kwargs):
        return (torch.zeros_like(args[0]), *args[1:]), kwargs

    handle = model.vision.register_forward_pre_hook(blank, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def is_loss(metric: str) -> bool:
    """A metric named like a loss (lower is better; lmm.analysis.ablate reads names the same way)."""
    return "loss" in metric or "perplexity" in metric


def needs_vision(seen: dict[str, float], blind: dict[str, float]) -> dict[str, float]:
    """score − blind score for every metric both have (not losses)."""
    return {k: round(seen[k] - blind[k], 4) for k in seen if k in blind and not is_loss(k)}


def blind_summary(result: dict, blind_result: dict) -> dict:
    """What results.json keeps of the blind pass beside the benchmark's own entry."""
    summary = {
        "metrics": blind_result["metrics"],
        "needs_vision": needs_vision(result["metrics"], blind_result["metrics"]),
    }
    if "per_question_type" in result:
        summary["per_question_type"] = blind_result.get("per_question_type", {})
        summary["needs_vision_per_question_type"] = needs_vision(
            result["per_question_type"], blind_result.get("per_question_type", {})
        )
    return summary


def question_key(record: dict) -> str:
    """A prediction's question: (id, turn) for the synthetic benchmark, question_id for the others."""
    if "question_id" in record:
        return str(record["question_id"])
    return f"{record.get('id')}#{record.get('turn', 0)}"


def mark_blind_answers(predictions: Path, name: str) -> None:
    """Record in predictions/<name>.jsonl, per question, the blind answer and whether it was right
    (`blind_score`, where the benchmark scores questions one by one). Rank 0 only."""
    seen_path, blind_path = predictions / f"{name}.jsonl", predictions / f"{name}{BLIND}.jsonl"
    if not is_main_process() or not seen_path.exists() or not blind_path.exists():
        return
    blind = {question_key(r): r for r in map(json.loads, blind_path.read_text().splitlines())}
    records = []
    for record in map(json.loads, seen_path.read_text().splitlines()):
        other = blind.get(question_key(record), {})
        answer = other.get("prediction", other.get("text"))
        records.append(
            record | {"blind_answer": answer} | ({"blind_score": other["score"]} if "score" in other else {})
        )
    write_jsonl(seen_path, records)
