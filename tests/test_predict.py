"""lmm predict answers a JSONL file (bad questions recorded, not fatal); lmm chat is driven through stdin."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmm.build.factory import build_run
from lmm.commands.predict import main as predict
from lmm.data.shards import evaluation_stream, list_shards
from lmm.interop.export import save_lmm
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(data_root, tmp_path_factory):
    cfg = compose_config([], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    out = tmp_path_factory.mktemp("export") / "lmm"
    save_lmm(model.eval(), processor, cfg, out)
    folder = tmp_path_factory.mktemp("images")
    sample = next(iter(evaluation_stream(list_shards(data_root / "synthetic" / "test"))))
    (folder / "scene.jpg").write_bytes(next(sample[k] for k in ("jpg", "png", "jpeg") if k in sample))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return out, folder


def test_predict_answers_and_records_bad_questions(exported, tmp_path):
    model_dir, images = exported
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "\n".join(
            [
                json.dumps({"question_id": 1, "image": "scene.jpg", "text": "What shape is there?\n"}),
                json.dumps({"question_id": 2, "image": "broken.jpg", "text": "And here?"}),
                json.dumps({"question_id": 3, "text": "No image at all?"}),
                "{not json",
                json.dumps(
                    {
                        "question_id": 5,
                        "image": ["scene.jpg", "scene.jpg"],
                        "text": "Is the shape in <image> also in <image>?",
                    }
                ),
            ]
        )
        + "\n"
    )
    out = tmp_path / "answers.jsonl"
    counts = predict(
        [
            str(model_dir),
            "--input",
            str(questions),
            "--output",
            str(out),
            "--image-folder",
            str(images),
            "--max-new-tokens",
            "6",
            "--batch-size",
            "2",
        ]
    )
    assert counts == {"answered": 3, "errors": 2}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [
        1,
        3,
        5,
        "line 4",
        2,
    ]  # as given, as LLaVA's answer files keep them
    assert lines[0]["prompt"] == "What shape is there?\n"
    assert all(isinstance(line["text"], str) for line in lines[:3]) and lines[4]["error"].startswith("image:")


@pytest.mark.slow
def test_chat_through_stdin(exported):
    """/image adds an image to the conversation: the second makes it a two-image chat."""
    model_dir, images = exported
    script = (
        "\n".join(
            [
                f"/image {images / 'missing.jpg'}",
                f"/image {images / 'broken.jpg'}",
                f"/image {images / 'scene.jpg'}",
                "What shape is in the first cell?",
                "And the colour?",
                f"/image {images / 'scene.jpg'}",
                "Is the shape in the first image also in the second?",
                "/reset",
                "Hello",
                "/quit",
                "never read",
            ]
        )
        + "\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "lmm.commands.chat", str(model_dir), "--max-new-tokens", "5"],
        input=script,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.count("cannot use image") == 2 and "goes on without it" in out  # the chat went on
    assert f"image {images / 'scene.jpg'} added (image 1 of this conversation)" in out
    assert f"image {images / 'scene.jpg'} added (image 2 of this conversation)" in out
    assert out.count("ASSISTANT:") == 4 and "cannot answer" not in out and "conversation reset" in out


def test_predict_reads_image_lists_and_checks_their_tags(tmp_path):
    from lmm.commands.predict import read_questions

    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {"question_id": "first", "image": ["x.jpg", "y.jpg"], "text": "Which has more red objects?"},
                {"question_id": "placed", "image": ["x.jpg", "y.jpg"], "text": "Is <image> like <image>?"},
                {"question_id": "tags", "image": ["x.jpg"], "text": "<image> and <image>?"},
                {"question_id": "empty", "image": [], "text": "Nothing?"},
                {"question_id": "typed", "image": ["x.jpg", 3], "text": "Mixed?"},
            ]
        )
        + "\n"
    )
    read, errors = read_questions(questions, tmp_path)
    assert [(q.qid, q.prompt, q.image) for q in read] == [
        ("first", "Which has more red objects?", [tmp_path / "x.jpg", tmp_path / "y.jpg"]),
        ("placed", "Is <image> like <image>?", [tmp_path / "x.jpg", tmp_path / "y.jpg"]),
    ]
    assert [e["question_id"] for e in errors] == ["line 3", "line 4", "line 5"]
    assert "2 <image> tag(s) but 1 image(s)" in errors[0]["error"] and all(
        "list of paths" in e["error"] for e in errors[1:]
    )


def test_predict_records_every_malformed_line(tmp_path):
    """Wrong types and stray bytes are recorded per line (checked before the model loads)."""
    from lmm.commands.predict import read_questions

    questions = tmp_path / "questions.jsonl"
    questions.write_bytes(
        b"\n".join(
            [
                json.dumps({"question_id": 1, "text": "fine?"}).encode(),
                json.dumps({"question_id": 2, "text": 123}).encode(),
                json.dumps({"question_id": 3, "text": "x", "image": 5}).encode(),
                b'{"question_id": 4, "text": "bad \xff byte"}',
                json.dumps([1, 2]).encode(),
            ]
        )
        + b"\n"
    )
    good, bad = read_questions(questions, tmp_path)
    assert [q.qid for q in good] == ["1"]
    assert [(e["question_id"], e["error"].split(":")[1].strip()[:12]) for e in bad] == [
        ("line 2", "'text' must "),
        ("line 3", "'image' must"),
        ("line 4", "not UTF-8 (i"),
        ("line 5", "not a JSON o"),
    ]


def test_predict_reads_only_regular_image_files_and_says_a_missing_input_in_one_line(tmp_path):
    import os

    from lmm.commands.predict import read_questions
    from lmm.data.sample import Skip
    from lmm.eval.official import Question, question_example

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for path, reason in (
        (Path("/dev/zero"), "is not a regular file"),
        (fifo, "is not a regular file"),
        (tmp_path, "is not a regular file"),
        (tmp_path / "absent.jpg", "cannot read"),
    ):
        skip = question_example(processor=None, q=Question("q", "What?", path))
        assert isinstance(skip, Skip) and skip.reason.startswith("image: ") and reason in skip.reason
    with pytest.raises(SystemExit, match=r"^\[lmm\] --input .*missing.jsonl: no such file"):
        read_questions(tmp_path / "missing.jsonl", tmp_path)


def test_command_usage_answers_without_loading_torch():
    """`python -m lmm.commands.predict` (and chat, convert_llava) with no arguments prints usage at once:
    importing the command does not import torch, transformers or the model code."""
    code = (
        "import sys, lmm.commands.predict, lmm.commands.chat, lmm.interop.convert_llava; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules); print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
