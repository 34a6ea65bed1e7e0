"""Batch inference with the batched greedy generator.

    lmm predict CKPT --input questions.jsonl --output answers.jsonl
        [--image-folder DIR] [--batch-size 16] [--max-new-tokens 128] [--device cpu]

CKPT is an `export.format=lmm` directory or a finished run directory. Input lines follow
LLaVA's model_vqa format: {"question_id", "text", "image"?} with `image` relative to
--image-folder (default: the input file's folder); `image` may be a list (several images), and
`text` may place them with one `<image>` tag each (without tags, the images go first). Output lines:
{"question_id", "prompt", "text", "model_id"}, with `question_id` and `prompt` exactly as the input
gave them (as LLaVA's answer files); a question that cannot be answered (unreadable image, too
long) gets {"question_id", "error"} instead, and is counted: the run never stops on one bad question.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmm.data.conversation import IMAGE_TOKEN

if TYPE_CHECKING:
    from lmm.eval.official import Question

# torch, transformers and the model code are imported where they are used: `--help` and a usage
# error answer at once.


def parse_question(raw: bytes, n: int, image_folder: Path) -> Question:
    """One input line as a question; ValueError says what is wrong with it."""
    from lmm.data.sample import decode_json
    from lmm.eval.official import Question

    record = decode_json(raw)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    text, image, qid = record.get("text"), record.get("image"), record.get("question_id", n)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string")
    images = image if isinstance(image, list) else [] if image is None else [image]
    if not all(isinstance(path, str) and path for path in images) or (isinstance(image, list) and not image):
        raise ValueError(f"'image' must be a path (a string) or a non-empty list of paths, got {image!r}"[:200])
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise ValueError(f"'question_id' must be a string or an integer, got {type(qid).__name__}")
    tags = text.count(IMAGE_TOKEN)
    if tags and tags != len(images):
        raise ValueError(
            f"'text' has {tags} {IMAGE_TOKEN} tag(s) but {len(images)} image(s): give one tag per image, or none"
        )
    paths = [image_folder / path for path in images]
    return Question(
        str(qid), text, paths if isinstance(image, list) else (paths[0] if paths else None), extra={"question_id": qid}
    )


def read_questions(path: Path, image_folder: Path) -> tuple[list[Question], list[dict]]:
    """Questions, and error records for the lines that are not usable questions (checked before
    any model is loaded; one bad line never stops the others)."""
    questions, errors = [], []
    if not path.is_file():
        raise SystemExit(f"[lmm] --input {path}: no such file (or not a regular file)")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise SystemExit(f"[lmm] --input {path}: cannot read it ({e.strerror})") from None
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            questions.append(parse_question(raw, n, image_folder))
        except ValueError as e:
            errors.append({"question_id": f"line {n}", "error": f"not a question: {e}"})
    return questions, errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--image-folder", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from lmm.build.factory import load_for_command
    from lmm.data.sample import Skip
    from lmm.eval.answer import answer_questions, write_jsonl
    from lmm.eval.official import question_example

    questions, errors = read_questions(args.input, args.image_folder or args.input.parent)  # before the model loads
    model, processor = load_for_command(args.ckpt, args.device)
    answers = answer_questions(
        model,
        processor,
        questions,
        lambda q: question_example(processor, q),
        args.batch_size,
        args.max_new_tokens,
        args.device,
    )
    answered = [
        {"question_id": q.extra["question_id"], "prompt": q.prompt, "text": a, "model_id": str(args.ckpt)}
        for q, a in zip(questions, answers, strict=True)
        if not isinstance(a, Skip)
    ]
    errors += [
        {"question_id": q.extra["question_id"], "error": a.reason}
        for q, a in zip(questions, answers, strict=True)
        if isinstance(a, Skip)
    ]
    write_jsonl(args.output, answered + errors)
    for error in errors[:10]:
        print(f"[lmm] question {error['question_id']} not answered: {error['error']}", file=sys.stderr)
    print(f"[lmm] {len(answered)} answers, {len(errors)} unanswerable question(s) -> {args.output}")
    return {"answered": len(answered), "errors": len(errors)}


if __name__ == "__main__":
    main()
