"""The synthetic benchmark as local lmms-eval tasks: task=eval's questions, prompts and scoring, no hub.

    lmm lmms-eval-tasks DATA_ROOT OUT_DIR [--split test] [--limit N]
    lmms-eval --model lmm --model_args pretrained=RUN_DIR --include_path OUT_DIR --tasks lmm_synthetic

DATA_ROOT is a synthetic mixture (`make data`: data/synthetic). OUT_DIR receives one JSONL per
task (images embedded as base64, so the folder can be moved) and the task YAMLs:

    lmm_synthetic_vqa, _ocr, _region_caption   generate_until, exact match (lmm's normalisation)
    lmm_synthetic_region_grounding             generate_until, Acc@IoU≥0.5 of the parsed box
    lmm_synthetic_<source>                     the mixture's other question sources (ocr_small, small_text,
                                               two_image: two images per question, ...), exact match
    lmm_synthetic_vqa_mc                       multiple_choice over loglikelihood: the VQA questions,
                                               choices = every answer of that question type in the split
    lmm_synthetic                              the group of the generative tasks

`--limit N` reads the split's first N records, as `eval.benchmarks.synthetic.limit=N` does, so
lmms-eval's scores can be set against task=eval's on the same questions.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path

from PIL import Image

from lmm.data.image import ImageError
from lmm.data.sample import image_keys, parse_record
from lmm.data.shards import evaluation_stream, list_complete_shards
from lmm.eval.benchmarks import question_turns
from lmm.eval.metrics import box_iou, normalize_answer, parse_box

GROUP = "lmm_synthetic"
GENERATIVE_TASKS = {  # task -> (which questions, the metric its process_results returns)
    "vqa": (lambda m: m["source"] == "vqa", "exact_match"),
    "ocr": (lambda m: m["source"] == "ocr", "exact_match"),
    "region_grounding": (lambda m: m["qtype"] == "grounding", "acc_iou50"),
    "region_caption": (lambda m: m["qtype"] == "region_caption", "exact_match"),
}
MAX_NEW_TOKENS = 24  # the synthetic benchmark's own (SyntheticBenchmark.max_new_tokens)
HERE = "lmm.interop.lmms_eval_tasks"  # what the YAMLs import (not __name__: "__main__" when run as a program)

GENERATE_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function {here}.doc_to_visual
doc_to_text: !function {here}.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  until: []
process_results: !function {here}.{scorer}
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
"""

CHOICE_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function {here}.doc_to_visual
doc_to_text: !function {here}.doc_to_text
doc_to_choice: !function {here}.doc_to_choice
doc_to_target: target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


# --- the functions the YAMLs name (called by lmms-eval per document) ------------------------------


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The document's images in the order of their <image> tags (none for a text-only question)."""
    return [Image.open(io.BytesIO(base64.b64decode(image))) for image in doc.get("images", [])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def doc_to_choice(doc: dict) -> list[str]:
    return doc["choices"]


def exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}


def grounding(doc: dict, results: list[str]) -> dict[str, float]:
    box, target = parse_box(results[0]), parse_box(doc["answer"])
    return {"acc_iou50": float(box is not None and target is not None and box_iou(box, target) >= 0.5)}


# --- writing the tasks ------------------------------------------------------------------------------


def synthetic_questions(root: Path, split: str = "test", limit: int | None = None) -> list[dict]:
    """The generative questions of the split's first `limit` records, as SyntheticBenchmark asks them."""
    docs = []
    for n, sample in enumerate(evaluation_stream(list_complete_shards(Path(root) / split), split_by_node=False)):
        if limit is not None and n >= limit:
            break
        try:
            record = parse_record(sample.get("json"))
        except ValueError:
            continue  # task=eval counts it as skipped; it has no question to ask
        if record["source"] == "description":  # scored by teacher-forced loss, not by a generated answer
            continue
        try:
            images = [base64.b64encode(sample[k]).decode() for k in image_keys(sample)]
        except ImageError:
            continue  # task=eval skips it too
        for question, meta in question_turns(record):
            docs.append({**meta, "question": question, "images": images})
    return docs


def with_choices(docs: list[dict]) -> list[dict]:
    """Each doc with `choices` (every answer its question type has in these docs, sorted) and `target`."""
    answers: dict[str, set[str]] = {}
    for doc in docs:
        answers.setdefault(doc["qtype"], set()).add(doc["answer"])
    return [
        {**doc, "choices": sorted(answers[doc["qtype"]]), "target": sorted(answers[doc["qtype"]]).index(doc["answer"])}
        for doc in docs
    ]


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))


def write_tasks(root: Path, out: Path, split: str = "test", limit: int | None = None) -> dict[str, int]:
    """Write the task folder; returns the number of documents per task written (empty tasks are left out)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = synthetic_questions(root, split, limit)
    counts: dict[str, int] = {}
    others = sorted({d["source"] for d in docs} - {"vqa", "ocr", "region"})  # exact match, as task=eval scores them
    tasks = GENERATIVE_TASKS | {
        source: (lambda m, source=source: m["source"] == source, "exact_match") for source in others
    }
    for name, (selects, metric) in tasks.items():
        chosen = [d for d in docs if selects(d)]
        if not chosen:
            continue
        task = f"{GROUP}_{name}"
        write_jsonl(out / f"{task}.jsonl", chosen)
        (out / f"{task}.yaml").write_text(
            GENERATE_YAML.format(
                task=task,
                data=f"{task}.jsonl",
                here=HERE,
                max_new_tokens=MAX_NEW_TOKENS,
                metric=metric,
                scorer="grounding" if metric == "acc_iou50" else "exact_match",
            )
        )
        counts[task] = len(chosen)
    vqa = [d for d in docs if d["source"] == "vqa"]
    if vqa:
        task = f"{GROUP}_vqa_mc"
        write_jsonl(out / f"{task}.jsonl", with_choices(vqa))
        (out / f"{task}.yaml").write_text(CHOICE_YAML.format(task=task, data=f"{task}.jsonl", here=HERE))
        counts[task] = len(vqa)
    generative = [t for t in counts if not t.endswith("_mc")]
    (out / f"{GROUP}.yaml").write_text(f"group: {GROUP}\ntask:\n" + "".join(f"  - {t}\n" for t in generative))
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="a synthetic mixture (data/synthetic)")
    parser.add_argument("out", type=Path, help="the task folder to write (lmms-eval --include_path)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="only the split's first N records")
    args = parser.parse_args(argv)
    counts = write_tasks(args.root, args.out, args.split, args.limit)
    for task, n in counts.items():
        print(f"[lmm] {task}: {n} questions")
    print(f"[lmm] lmms-eval --model lmm --model_args pretrained=RUN_DIR --include_path {args.out} --tasks {GROUP}")
    return counts


if __name__ == "__main__":
    main()
