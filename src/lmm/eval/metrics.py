"""Metrics as torchmetrics `Metric`s (so they reduce across ranks): exact match, Acc@IoU, mean loss."""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

_NUMBER = r"-?\d+(?:\.\d+)?"
_BOX = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")


def normalize_answer(text: str) -> str:
    """Lower-case, trim, drop a trailing period, collapse whitespace (LLaVA's short-answer scoring)."""
    text = " ".join(text.strip().lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def parse_box(text: str) -> list[float] | None:
    """The first `[x1, y1, x2, y2]` in the text, or None."""
    match = _BOX.search(text)
    return [float(v) for v in match.groups()] if match else None


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


class ExactMatch(Metric):
    """Fraction of predictions equal to the target after `normalize_answer`."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, predictions: list[str], targets: list[str]) -> None:
        self.correct += sum(normalize_answer(p) == normalize_answer(t) for p, t in zip(predictions, targets, strict=True))
        self.total += len(targets)

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1)


class BoxAccuracy(Metric):
    """Acc@IoU≥threshold (REC's metric). An unparseable prediction counts as wrong, and is counted."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, predictions: list[str], targets: list[list[float]]) -> None:
        for prediction, target in zip(predictions, targets, strict=True):
            box = parse_box(prediction)
            if box is None:
                self.unparsed += 1
            elif box_iou(box, target) >= self.threshold:
                self.correct += 1
            self.total += 1

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1)
