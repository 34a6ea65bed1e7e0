"""Benchmark metrics: answer parsing and scoring.

Accumulating metrics are torchmetrics `Metric`s so that they reduce across ranks.
"""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

from lmm.eval.vqa_normalize import normalize_vqa_answer

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
        self.correct += sum(
            normalize_answer(p) == normalize_answer(t) for p, t in zip(predictions, targets, strict=True)
        )
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


# --- VQA soft accuracy (VQAv2, TextVQA, VizWiz) --------------------------------------------------


def vqa_soft_accuracy(prediction: str, answers: list[str]) -> float:
    """min(1, matches / 3) averaged over the leave-one-out subsets of the human answers
    (10 for VQAv2), both sides normalised with `normalize_vqa_answer`."""
    if not answers:
        return 0.0
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in answers]
    scores = []
    for left_out in range(len(humans)):
        matches = sum(1 for j, h in enumerate(humans) if j != left_out and h == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


class MeanScore(Metric):
    """Mean of per-sample scores in [0, 1] (soft accuracy, ANLS, ...), reduced across ranks."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total_score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: list[float]) -> None:
        self.total_score += float(sum(scores))
        self.count += len(scores)

    def compute(self) -> torch.Tensor:
        return self.total_score / self.count.clamp(min=1)


# --- yes/no (POPE, MME) ----------------------------------------------------------------------------


def pope_answer(text: str) -> str:
    """LLaVA's POPE parsing: first sentence, commas dropped; 'no'/'No'/'not' as a word -> no, else yes."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


class YesNoMetrics(Metric):
    """POPE: accuracy, precision, recall, F1 (positive = "yes") and the yes-ratio."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, predictions: list[str], labels: list[str]) -> None:
        for prediction, label in zip(predictions, labels, strict=True):
            yes, positive = pope_answer(prediction) == "yes", label.strip().lower() == "yes"
            if yes and positive:
                self.tp += 1
            elif yes:
                self.fp += 1
            elif positive:
                self.fn += 1
            else:
                self.tn += 1

    def compute(self) -> dict[str, float]:
        tp, fp, tn, fn = (float(x) for x in (self.tp, self.fp, self.tn, self.fn))
        total = max(1.0, tp + fp + tn + fn)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "accuracy": (tp + tn) / total,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": (tp + fp) / total,
        }


def mme_answer(text: str) -> str:
    """MME's parsing: 'yes'/'no' as is; else look at the first 4 characters; else 'other'."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def mme_scores(records: list[dict]) -> dict[str, float]:
    """records: {subtask, image, prediction, answer}. Per subtask accuracy×100 + accuracy+×100
    (accuracy+ counts images whose questions are all right); perception and cognition totals."""
    by_task: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        right = mme_answer(r["prediction"]) == r["answer"].strip().lower()
        by_task.setdefault(r["subtask"], {}).setdefault(r["image"], []).append(right)
    scores: dict[str, float] = {}
    for task, images in by_task.items():
        answers = [a for per_image in images.values() for a in per_image]
        accuracy = 100 * sum(answers) / len(answers)
        accuracy_plus = 100 * sum(all(v) for v in images.values()) / len(images)
        scores[f"{task}/accuracy"], scores[f"{task}/accuracy_plus"] = accuracy, accuracy_plus
        scores[f"{task}/score"] = accuracy + accuracy_plus
    scores["perception"] = sum(scores.get(f"{t}/score", 0.0) for t in MME_PERCEPTION)
    scores["cognition"] = sum(scores.get(f"{t}/score", 0.0) for t in MME_COGNITION)
    return scores


MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


# --- multiple choice (ScienceQA, MMBench, SEED) --------------------------------------------------

_LETTER_FIRST = re.compile(r"^(?:([A-Z])$|([A-Z])[.:)](?:\s|$)|\(([A-Z])\))")
_LETTER_STATED = re.compile(r"(?:answer|option|choice)(?: is|:)?\s*\(?([A-Z])\)?(?:[.\s]|$)", re.IGNORECASE)


def extract_letter(text: str, num_options: int = 26) -> str | None:
    """'B', 'B.', '(B)', 'B) text', 'The answer is B.' -> 'B'; None when no option letter is given."""
    text = text.strip()
    valid = {chr(ord("A") + i) for i in range(num_options)}
    for pattern in (_LETTER_FIRST, _LETTER_STATED):
        match = pattern.search(text)
        letter = next((g for g in match.groups() if g), None) if match else None
        if letter and letter.upper() in valid:
            return letter.upper()
    return None


# --- OCR-style answers -------------------------------------------------------------------------------


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity: best over the answers, 0 below the threshold."""
    best = 0.0
    p = prediction.strip().lower()
    for answer in answers:
        a = answer.strip().lower()
        if not p and not a:
            return 1.0
        similarity = 1 - _edit_distance(p, a) / max(len(p), len(a))
        best = max(best, similarity if similarity >= threshold else 0.0)
    return best
