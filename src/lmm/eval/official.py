"""LLaVA-1.5's benchmarks read from their official files, prompted as in the paper's Table 8, scored exactly.

Each benchmark turns its files into `Question`s (prompt text, image, gold answer) and scores the
generated answers; `QuestionBenchmark.run` does the shared part through the one question
runner (lmm.eval.answer: rank split, batched generation, gather, predictions file). Files are only read from local
paths; a missing one fails with the path
expected and where the official file comes from.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lmm.data.conversation import images_first
from lmm.data.image import ImageError, read_image_file
from lmm.data.sample import Example, SampleProcessor, Skip, image_entries
from lmm.data.sources import GROUNDING, MULTIPLE_CHOICE, SHORT_ANSWER
from lmm.eval.answer import answer_questions, write_predictions
from lmm.eval.metrics import (
    BoxAccuracy,
    MeanScore,
    YesNoMetrics,
    extract_letter,
    mme_scores,
    normalize_answer,
    vqa_soft_accuracy,
)
from lmm.model.lmm import LMM

UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


@dataclass
class Question:
    qid: str
    prompt: str  # the human turn: without <image> tags (the images go first), or with one per image where they stand
    image: Path | bytes | list | None  # one image, or a list of them (several images, in the order of their tags)
    gold: object = None
    extra: dict = field(default_factory=dict)


def require(path: Path, origin: str) -> Path:
    if not Path(path).exists():
        raise FileNotFoundError(f"missing benchmark file {path}; it comes from {origin}")
    return Path(path)


def read_json(path: Path, origin: str):
    return json.loads(require(path, origin).read_text())


def read_jsonl(path: Path, origin: str) -> list[dict]:
    return [json.loads(line) for line in require(path, origin).read_text().splitlines() if line.strip()]


def soft_accuracy(questions: list[Question], answers: list[str]) -> dict[str, float]:
    metric = MeanScore()
    metric.update([vqa_soft_accuracy(a, q.gold) for q, a in zip(questions, answers, strict=True) if q.gold])
    return {"accuracy": float(metric.compute())} if int(metric.count) else {}


def options_text(options: list[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def question_example(processor: SampleProcessor, q: Question) -> Example | Skip:
    """A question as a generation-ready example, or a Skip with the reason. A prompt without tags
    gets its images first (as LLaVA); one with tags keeps them where they stand (a count that
    differs from the images is a Skip, as in training)."""
    sample: dict = {"__key__": str(q.qid)}
    images = q.image if isinstance(q.image, list) else [] if q.image is None else [q.image]
    try:
        sample |= image_entries([image if isinstance(image, bytes) else read_image_file(image) for image in images])
    except ImageError as e:
        return Skip(str(q.qid), f"image: {e}")
    prompt = images_first(q.prompt, len(images))
    return processor.encode(sample, [{"from": "human", "value": prompt}], generation_prompt=True, meta={"qid": q.qid})


class QuestionBenchmark:
    """Shared machinery: questions -> batched greedy answers -> metrics + predictions file."""

    name = "benchmark"
    max_new_tokens = 16

    def __init__(self, root: str, batch_size: int = 32, limit: int | None = None, max_new_tokens: int | None = None):
        self.root, self.batch_size, self.limit = Path(root), batch_size, limit
        if max_new_tokens:
            self.max_new_tokens = max_new_tokens

    def questions(self) -> list[Question]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise if the benchmark's files are missing (called before training): its questions are read."""
        if not self.questions():
            raise ValueError(f"{self.name}: no questions under {self.root}")

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def run(self, model: LMM, processor: SampleProcessor, device="cpu", out_dir: Path | None = None) -> dict:
        start = time.perf_counter()
        questions = self.questions()[: self.limit]
        answers = answer_questions(
            model,
            processor,
            questions,
            lambda q: question_example(processor, q),
            self.batch_size,
            self.max_new_tokens,
            device,
        )
        answered = [(q, a) for q, a in zip(questions, answers, strict=True) if not isinstance(a, Skip)]
        skipped = [(q.qid, a.reason) for q, a in zip(questions, answers, strict=True) if isinstance(a, Skip)]
        metrics = self.score([q for q, _ in answered], [a for _, a in answered]) if answered else {}
        if out_dir is not None:  # written by rank 0 only
            records = [
                {"question_id": q.qid, "prompt": q.prompt, "text": a, "gold": q.gold, **q.extra} for q, a in answered
            ]
            write_predictions(out_dir, self.name, records)
        for qid, reason in skipped[:5]:
            print(f"[lmm] {self.name}: skipped question {qid}: {reason}", file=sys.stderr)
        return {
            "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
            "n": len(answered),
            "skipped": len(skipped),
            "wall_s": round(time.perf_counter() - start, 2),
        }


class VQAv2(QuestionBenchmark):
    """VQAv2 val (questions + annotations): soft accuracy. With `split=test-dev` (no annotations)
    it writes the EvalAI submission JSON `[{"question_id", "answer"}]` instead."""

    name = "vqav2"
    ORIGIN = "https://visualqa.org/download.html (v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json)"  # noqa: E501 - an address

    def __init__(
        self,
        root: str,
        questions: str = "v2_OpenEnded_mscoco_val2014_questions.json",
        annotations: str | None = "v2_mscoco_val2014_annotations.json",
        images: str = "val2014",
        image_prefix: str = "COCO_val2014_",
        submission: str | None = None,
        **kw,
    ):
        super().__init__(root, **kw)
        self.questions_file, self.annotations_file = questions, annotations
        self.images, self.image_prefix, self.submission = images, image_prefix, submission

    def questions(self) -> list[Question]:
        qs = read_json(self.root / self.questions_file, self.ORIGIN)["questions"]
        gold = {}
        if self.annotations_file:
            for a in read_json(self.root / self.annotations_file, self.ORIGIN)["annotations"]:
                gold[a["question_id"]] = [x["answer"] for x in a["answers"]]
        return [
            Question(
                q["question_id"],
                f"{q['question']}\n{SHORT_ANSWER}",
                self.root / self.images / f"{self.image_prefix}{q['image_id']:012d}.jpg",
                gold.get(q["question_id"]),
            )
            for q in qs
        ]

    def score(self, questions, answers):
        if self.submission:
            from lmm.eval.vqa_normalize import normalize_vqa_answer

            Path(self.submission).write_text(
                json.dumps(
                    [
                        {"question_id": q.qid, "answer": normalize_vqa_answer(a)}
                        for q, a in zip(questions, answers, strict=True)
                    ]
                )
            )
            print(f"[lmm] EvalAI submission written to {self.submission}")
        return soft_accuracy(questions, answers)


class GQA(QuestionBenchmark):
    """GQA testdev-balanced: exact match (lower-case, trailing period dropped, as LLaVA scores it)."""

    name = "gqa"
    ORIGIN = "https://cs.stanford.edu/people/dorarad/gqa/download.html (testdev_balanced_questions.json, images/)"

    def __init__(self, root: str, questions: str = "testdev_balanced_questions.json", images: str = "images", **kw):
        super().__init__(root, **kw)
        self.questions_file, self.images = questions, images

    def questions(self):
        data = read_json(self.root / self.questions_file, self.ORIGIN)
        return [
            Question(
                qid, f"{q['question']}\n{SHORT_ANSWER}", self.root / self.images / f"{q['imageId']}.jpg", q["answer"]
            )
            for qid, q in data.items()
        ]

    def score(self, questions, answers):
        return {
            "accuracy": sum(
                normalize_answer(a) == normalize_answer(q.gold) for q, a in zip(questions, answers, strict=True)
            )
            / len(questions)
        }


class VizWiz(QuestionBenchmark):
    """VizWiz val: soft accuracy; the prompt allows 'Unanswerable'."""

    name = "vizwiz"
    ORIGIN = "https://vizwiz.org/tasks-and-datasets/vqa/ (val.json, val/)"

    def __init__(self, root: str, questions: str = "val.json", images: str = "val", **kw):
        super().__init__(root, **kw)
        self.questions_file, self.images = questions, images

    def questions(self):
        data = read_json(self.root / self.questions_file, self.ORIGIN)
        return [
            Question(
                q["image"],
                f"{q['question']}\n{UNANSWERABLE}\n{SHORT_ANSWER}",
                self.root / self.images / q["image"],
                [a["answer"] for a in q["answers"]],
            )
            for q in data
        ]

    def score(self, questions, answers):
        return soft_accuracy(questions, answers)


class TextVQA(QuestionBenchmark):
    """TextVQA val: soft accuracy. `ocr_tokens=true` appends "Reference OCR token: …" from the
    Rosetta OCR file (LLaVA's protocol); false leaves them out (lmms-eval's)."""

    name = "textvqa"
    ORIGIN = "https://textvqa.org/dataset/ (TextVQA_0.5.1_val.json, TextVQA_Rosetta_OCR_v0.2_val.json, train_images/)"

    def __init__(
        self,
        root: str,
        questions: str = "TextVQA_0.5.1_val.json",
        ocr: str = "TextVQA_Rosetta_OCR_v0.2_val.json",
        images: str = "train_images",
        ocr_tokens: bool = True,
        **kw,
    ):
        super().__init__(root, **kw)
        self.questions_file, self.ocr_file, self.images, self.ocr_tokens = questions, ocr, images, ocr_tokens

    def questions(self):
        data = read_json(self.root / self.questions_file, self.ORIGIN)["data"]
        tokens = {}
        if self.ocr_tokens:
            tokens = {d["image_id"]: d["ocr_tokens"] for d in read_json(self.root / self.ocr_file, self.ORIGIN)["data"]}
        out = []
        for q in data:
            prompt = q["question"]
            if self.ocr_tokens and tokens.get(q["image_id"]):
                prompt += "\nReference OCR token: " + ", ".join(tokens[q["image_id"]])
            out.append(
                Question(
                    q["question_id"],
                    f"{prompt}\n{SHORT_ANSWER}",
                    self.root / self.images / f"{q['image_id']}.jpg",
                    q["answers"],
                )
            )
        return out

    def score(self, questions, answers):
        return soft_accuracy(questions, answers)


class ScienceQAImg(QuestionBenchmark):
    """ScienceQA-IMG: test questions with an image; letter accuracy."""

    name = "scienceqa_img"
    ORIGIN = "https://scienceqa.github.io/ (problems.json, test/<id>/image.png)"

    def __init__(self, root: str, problems: str = "problems.json", images: str = "test", split: str = "test", **kw):
        super().__init__(root, **kw)
        self.problems, self.images, self.split = problems, images, split

    def questions(self):
        out = []
        for pid, p in read_json(self.root / self.problems, self.ORIGIN).items():
            if p.get("split") != self.split or not p.get("image"):
                continue
            context = f"Context: {p['hint']}\n" if p.get("hint") else ""
            prompt = f"{context}{p['question']}\n{options_text(p['choices'])}\n{MULTIPLE_CHOICE}"
            out.append(
                Question(
                    pid,
                    prompt,
                    self.root / self.images / pid / p["image"],
                    chr(ord("A") + p["answer"]),
                    {"options": len(p["choices"])},
                )
            )
        return out

    def score(self, questions, answers):
        return {
            "accuracy": sum(
                extract_letter(a, q.extra["options"]) == q.gold for q, a in zip(questions, answers, strict=True)
            )
            / len(questions)
        }


class POPE(QuestionBenchmark):
    """POPE random/popular/adversarial: accuracy, precision, recall, F1, yes-ratio per split."""

    name = "pope"
    ORIGIN = "https://github.com/RUCAIBox/POPE (coco_pope_{random,popular,adversarial}.json, COCO val2014 images)"

    def __init__(self, root: str, splits: tuple = ("random", "popular", "adversarial"), images: str = "val2014", **kw):
        super().__init__(root, **kw)
        self.splits, self.images = tuple(splits), images

    def questions(self):
        out = []
        for split in self.splits:
            for q in read_jsonl(self.root / f"coco_pope_{split}.json", self.ORIGIN):
                out.append(
                    Question(
                        f"{split}/{q['question_id']}",
                        f"{q['text']}\n{SHORT_ANSWER}",
                        self.root / self.images / q["image"],
                        q["label"],
                        {"split": split},
                    )
                )
        return out

    def score(self, questions, answers):
        results = {}
        for split in self.splits:
            metric = YesNoMetrics()
            pairs = [(a, q.gold) for q, a in zip(questions, answers, strict=True) if q.extra["split"] == split]
            if pairs:
                metric.update([p for p, _ in pairs], [g for _, g in pairs])
                results.update({f"{split}/{k}": v for k, v in metric.compute().items()})
        return results


class MME(QuestionBenchmark):
    """MME: per subtask accuracy and accuracy+ (×100), perception and cognition totals. Reads
    both layouts: `<task>/<image>.txt` beside the image, or `images/` + `questions_answers_YN/`."""

    name = "mme"
    ORIGIN = "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation (MME_Benchmark_release_version)"  # noqa: E501 - an address

    def questions(self):
        from lmm.eval.metrics import MME_COGNITION, MME_PERCEPTION

        require(self.root, self.ORIGIN)
        out = []
        for task in (*MME_PERCEPTION, *MME_COGNITION):
            folder = self.root / task
            if not folder.exists():
                continue
            texts = folder / "questions_answers_YN"
            image_dir = folder / "images" if texts.exists() else folder
            text_dir = texts if texts.exists() else folder
            for txt in sorted(text_dir.glob("*.txt")):
                image = next(
                    (
                        p
                        for p in sorted(image_dir.glob(txt.stem + ".*"))
                        if p.suffix.lower() in (".jpg", ".png", ".jpeg")
                    ),
                    None,
                )
                for n, line in enumerate(txt.read_text().splitlines()):
                    if "\t" not in line:
                        continue
                    question, answer = line.rsplit("\t", 1)
                    out.append(
                        Question(
                            f"{task}/{txt.stem}/{n}",
                            f"{question}\n{SHORT_ANSWER}",
                            image,
                            answer.strip(),
                            {"subtask": task, "image": txt.stem},
                        )
                    )
        return out

    def score(self, questions, answers):
        return mme_scores(
            [{**q.extra, "prediction": a, "answer": q.gold} for q, a in zip(questions, answers, strict=True)]
        )


class MMBench(QuestionBenchmark):
    """MMBench (tsv, base64 images): letter accuracy and circular accuracy (a question counts
    only if it is right under every rotation of its options)."""

    name = "mmbench"
    ORIGIN = "https://github.com/open-compass/mmbench (mmbench_dev_20230712.tsv)"

    def __init__(self, root: str, file: str = "mmbench_dev_20230712.tsv", circular: bool = True, **kw):
        super().__init__(root, **kw)
        self.file, self.circular = file, circular

    def questions(self):
        csv.field_size_limit(sys.maxsize)
        out = []
        with open(require(self.root / self.file, self.ORIGIN), newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                options = [row[c] for c in "ABCD" if row.get(c) and row[c] != "nan"]
                answer = ord(row["answer"].strip()) - ord("A")
                rotations = range(len(options)) if self.circular else range(1)
                for r in rotations:
                    rotated = options[r:] + options[:r]
                    hint = f"{row['hint']}\n" if row.get("hint") and row["hint"] != "nan" else ""
                    prompt = f"{hint}{row['question']}\n{options_text(rotated)}\n{MULTIPLE_CHOICE}"
                    gold = chr(ord("A") + (answer - r) % len(options))
                    out.append(
                        Question(
                            f"{row['index']}/{r}",
                            prompt,
                            base64.b64decode(row["image"]),
                            gold,
                            {"index": row["index"], "options": len(options)},
                        )
                    )
        return out

    def score(self, questions, answers):
        right = [extract_letter(a, q.extra["options"]) == q.gold for q, a in zip(questions, answers, strict=True)]
        by_question = defaultdict(list)
        for q, ok in zip(questions, right, strict=True):
            by_question[q.extra["index"]].append(ok)
        first = [ok for q, ok in zip(questions, right, strict=True) if q.qid.endswith("/0")]
        result = {"accuracy": sum(first) / max(1, len(first))}
        if self.circular:
            result["circular_accuracy"] = sum(all(v) for v in by_question.values()) / len(by_question)
        return result


class SEEDBench(QuestionBenchmark):
    """SEED-Bench, image questions: letter accuracy, overall and per question type."""

    name = "seed_bench"
    ORIGIN = "https://github.com/AILab-CVC/SEED-Bench (SEED-Bench.json, SEED-Bench-image/)"

    def __init__(self, root: str, file: str = "SEED-Bench.json", images: str = "SEED-Bench-image", **kw):
        super().__init__(root, **kw)
        self.file, self.images = file, images

    def questions(self):
        data = read_json(self.root / self.file, self.ORIGIN)["questions"]
        out = []
        for q in data:
            if q.get("data_type") != "image":
                continue
            options = [q[f"choice_{c}"] for c in "abcd"]
            prompt = f"{q['question']}\n{options_text(options)}\n{MULTIPLE_CHOICE}"
            out.append(
                Question(
                    q["question_id"],
                    prompt,
                    self.root / self.images / q["data_id"],
                    q["answer"],
                    {"type": q["question_type_id"]},
                )
            )
        return out

    def score(self, questions, answers):
        right = [extract_letter(a, 4) == q.gold for q, a in zip(questions, answers, strict=True)]
        result = {"accuracy": sum(right) / len(right)}
        by_type = defaultdict(list)
        for q, ok in zip(questions, right, strict=True):
            by_type[q.extra["type"]].append(ok)
        result.update({f"type{t}/accuracy": sum(v) / len(v) for t, v in sorted(by_type.items())})
        return result


class RefCOCO(QuestionBenchmark):
    """RefCOCO / RefCOCO+ / RefCOCOg REC from a JSON(L) export (one expression per line:
    image, sentence, bbox [x, y, w, h] in pixels, width, height): Acc@IoU≥0.5, with boxes in
    LLaVA's frame (normalised to the padded square image)."""

    name = "refcoco"
    ORIGIN = "the refer toolkit (https://github.com/lichengunc/refer), exported to JSONL: {image, sentence, bbox, width, height}"  # noqa: E501 - an address

    def __init__(
        self, root: str, file: str = "refcoco_val.jsonl", images: str = "train2014", name: str | None = None, **kw
    ):
        super().__init__(root, **kw)
        self.file, self.images = file, images
        self.name = name or self.name

    def questions(self):
        out = []
        for n, r in enumerate(read_jsonl(self.root / self.file, self.ORIGIN)):
            x, y, w, h = r["bbox"]
            side = max(r["width"], r["height"])
            dx, dy = (side - r["width"]) / 2, (side - r["height"]) / 2
            box = [(x + dx) / side, (y + dy) / side, (x + w + dx) / side, (y + h + dy) / side]
            out.append(
                Question(r.get("id", n), f"{GROUNDING} {r['sentence']}.", self.root / self.images / r["image"], box)
            )
        return out

    def score(self, questions, answers):
        metric = BoxAccuracy(0.5)
        metric.update(answers, [q.gold for q in questions])
        return {"acc_iou50": float(metric.compute()), "unparsed": float(metric.unparsed) / len(questions)}
