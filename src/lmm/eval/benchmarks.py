"""Benchmarks: turn a split into prompts, generate, score. Synthetic benchmark for the default."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from lmm.core.ranks import rank_and_world
from lmm.data.collate import Collator
from lmm.data.conversation import IMAGE_TOKEN, images_first
from lmm.data.sample import Example, SampleProcessor, Skip, parse_record
from lmm.data.shards import evaluation_stream, list_complete_shards, read_manifest
from lmm.eval.answer import answer_questions, write_predictions
from lmm.eval.generate import evaluating
from lmm.eval.metrics import BoxAccuracy, ExactMatch, parse_box
from lmm.model.lmm import LMM


def question_turns(record: dict) -> list[tuple[str, dict]]:
    """Each question of a synthetic record as asked on its own: (the human turn with the record's
    images first, or where its tags stand; meta with id, turn, source, question type and the gold answer)."""
    turns, asked = record["conversations"], []
    images = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    for k, qtype in enumerate(record["qtypes"]):
        question = images_first(turns[2 * k]["value"], images)
        asked.append(
            (
                question,
                {
                    "id": record["id"],
                    "turn": k,
                    "source": record["source"],
                    "qtype": qtype,
                    "answer": turns[2 * k + 1]["value"],
                },
            )
        )
    return asked


class SyntheticBenchmark:
    """Scores the synthetic mixture's `split` per source.

    VQA and OCR: exact match after normalisation; region grounding: Acc@IoU≥0.5 on parsed
    boxes; region captions: exact match; descriptions: teacher-forced loss. Each question turn
    is asked on its own (image + that question), as LLaVA's evaluation does. Trivial baselines
    from the train split (majority answer per question type, a centred mean-size box) are
    scored on the same questions.
    """

    name = "synthetic"

    def __init__(
        self, root: str, split: str = "test", batch_size: int = 32, max_new_tokens: int = 24, limit: int | None = None
    ):
        self.root, self.split = Path(root), split
        self.batch_size, self.max_new_tokens, self.limit = batch_size, max_new_tokens, limit

    def check(self) -> None:
        """Raise if the split cannot be read (called before training)."""
        list_complete_shards(self.root / self.split)
        read_manifest(self.root, "the synthetic mixture's baselines")

    def _items(self, processor: SampleProcessor) -> tuple[list[tuple[dict, str, dict]], list[Example], int]:
        """The questions (sample, question turn, meta), the encoded descriptions, and the records skipped."""
        questions, descriptions, skipped = [], [], 0
        # Every rank reads every question (a few hundred); the runner splits the generation work.
        for n, sample in enumerate(
            evaluation_stream(list_complete_shards(self.root / self.split), split_by_node=False)
        ):
            if self.limit is not None and n >= self.limit:
                break
            try:
                record = parse_record(sample.get("json"))
            except ValueError:
                skipped += 1
                continue
            if record["source"] == "description":
                item = processor(sample)
                skipped += isinstance(item, Skip)
                descriptions += [item] if isinstance(item, Example) else []
                continue
            questions += [(sample, question, meta) for question, meta in question_turns(record)]
        return questions, descriptions, skipped

    @staticmethod
    def encode(processor: SampleProcessor, question: tuple[dict, str, dict]) -> Example | Skip:
        """One question of _items as a generation-ready example (or the Skip saying why not)."""
        sample, text, meta = question
        return processor.encode(sample, [{"from": "human", "value": text}], generation_prompt=True, meta=meta)

    def _description_loss(self, model: LMM, descriptions: list[Example], pad_token_id: int, device) -> MeanMetric:
        """Teacher-forced loss of the description answers, weighted by their token counts."""
        description_loss = MeanMetric()
        for batch in DataLoader(descriptions, batch_size=self.batch_size, collate_fn=Collator(pad_token_id)):
            batch = batch.to(device)
            out = model(**batch.model_inputs())
            description_loss.update(out.loss.cpu(), weight=int((batch.labels[:, 1:] != -100).sum()))
        return description_loss

    @torch.no_grad()
    def run(
        self, model: LMM, processor: SampleProcessor, device: torch.device | str = "cpu", out_dir: Path | None = None
    ) -> dict:
        start = time.perf_counter()
        tokenizer = processor.tokenizer
        baselines = read_manifest(self.root, "the synthetic mixture's baselines")["baselines"]
        questions, descriptions, skipped = self._items(processor)
        answers = answer_questions(
            model,
            processor,
            questions,
            lambda q: self.encode(processor, q),
            self.batch_size,
            self.max_new_tokens,
            device,
        )
        rank, world = rank_and_world()
        with evaluating(model):
            description_loss = self._description_loss(model, descriptions[rank::world], tokenizer.pad_token_id, device)
        metrics: dict[str, ExactMatch | BoxAccuracy] = {}
        baseline_metrics: dict[str, ExactMatch | BoxAccuracy] = {}
        per_qtype: dict[str, ExactMatch] = defaultdict(lambda: ExactMatch(sync_on_compute=False))
        records = []
        for (_, _, meta), answer in zip(questions, answers, strict=True):
            if isinstance(answer, Skip):  # could not be asked (e.g. too long for data.max_length)
                skipped += 1
                continue
            if meta["qtype"] == "grounding":
                key, target = "region/grounding_acc_iou50", parse_box(meta["answer"])
                baseline_answer = json.dumps(baselines["centred_box"])
                metric_cls = BoxAccuracy
            else:
                group = "region/caption_exact_match" if meta["source"] == "region" else f"{meta['source']}/exact_match"
                key, target = group, meta["answer"]
                baseline_answer = baselines["majority_answer"].get(meta["qtype"], "")
                metric_cls = ExactMatch
                per_qtype[f"{meta['source']}/{meta['qtype']}"].update([answer], [target])
            # Every rank holds all answers: no reduction across ranks.
            metric = metrics.setdefault(key, metric_cls(sync_on_compute=False))
            before = float(metric.correct)
            metric.update([answer], [target])
            baseline_metrics.setdefault(key, metric_cls(sync_on_compute=False)).update([baseline_answer], [target])
            # The question's own score, so lmm.analysis.ablate can resample questions (lmm.analysis.stats).
            records.append({**meta, "prediction": answer, "metric": key, "score": float(metric.correct) - before})
        results = {
            "split": self.split,
            "metrics": {k: round(float(m.compute()), 4) for k, m in sorted(metrics.items())},
            "baselines": {k: round(float(m.compute()), 4) for k, m in sorted(baseline_metrics.items())},
            "per_question_type": {k: round(float(m.compute()), 4) for k, m in sorted(per_qtype.items())},
            "counts": {k: int(m.total) for k, m in sorted(metrics.items())},
            "skipped": skipped,
        }
        if descriptions:  # the same on every rank, so every rank takes part in the reduction
            results["metrics"]["description/loss"] = round(float(description_loss.compute()), 4)
            results["counts"]["description/loss"] = len(descriptions)
        results["n"] = len(records) + len(descriptions)
        results["wall_s"] = round(time.perf_counter() - start, 2)
        if out_dir is not None:
            write_predictions(out_dir, self.name, records)
        return results
