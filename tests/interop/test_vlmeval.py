"""VLMEvalKit round trip, offline: the synthetic benchmark's questions as a local TSV dataset under
$LMUData, asked through VLMEvalKit's own inference path (tests/vlmeval_reference.py, copied from
its source) of lmm's adapter, answer exactly as task=eval does; interleaved messages keep their
tags where they stand; a question lmm cannot ask is answered "" and counted."""

import base64
import json

import pandas as pd
import pytest
import torch

from lmm.build.factory import build_run
from lmm.data.conversation import IMAGE_TOKEN
from lmm.data.sample import image_keys
from lmm.eval.benchmarks import SyntheticBenchmark
from lmm.eval.evaluate import evaluate
from lmm.interop.export import save_lmm
from lmm.interop.vlmeval_model import LmmVLMEval, message_question
from tests import vlmeval_reference as vlmeval
from tests.conftest import compose_config

LIMIT = 6  # test images (each with its questions)
DATASET = "LMM_Synthetic"


@pytest.fixture(scope="module")
def exported(data_root, tmp_path_factory):
    """A tiny model as an lmm directory, task=eval's predictions on the first LIMIT test images,
    and the same questions as a VLMEvalKit TSV dataset."""
    tmp = tmp_path_factory.mktemp("vlmeval")
    cfg = compose_config([f"eval.benchmarks.synthetic.limit={LIMIT}"], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    model.eval()
    save_lmm(model, processor, cfg, tmp / "model")
    evaluate(cfg, model, processor, tmp / "eval")
    predictions = [
        json.loads(line) for line in (tmp / "eval" / "predictions" / "synthetic.jsonl").read_text().splitlines()
    ]
    benchmark = SyntheticBenchmark(str(data_root / "synthetic"), limit=LIMIT)
    questions, _, _ = benchmark._items(processor)
    rows = []
    for sample, question, meta in questions:
        (key,) = image_keys(sample)
        rows.append(
            {
                "index": len(rows),
                "image": base64.b64encode(sample[key]).decode(),
                "question": question.replace(IMAGE_TOKEN + "\n", "", 1),
                "answer": meta["answer"],
                "category": f"{meta['source']}/{meta['qtype']}",
            }
        )
    (tmp / "LMUData").mkdir()
    pd.DataFrame(rows).to_csv(tmp / "LMUData" / f"{DATASET}.tsv", sep="\t", index=False)
    return tmp, predictions, questions


def test_vlmevalkit_answers_equal_task_eval(exported, monkeypatch):
    tmp, predictions, questions = exported
    monkeypatch.setenv("LMUData", str(tmp / "LMUData"))
    model = LmmVLMEval(model_path=str(tmp / "model"), device="cpu", max_new_tokens=24)
    answers = vlmeval.infer_data(model, vlmeval.ImageDataset(DATASET))
    assert len(answers) == len(questions) == len(predictions) > 10
    assert [answers[i] for i in range(len(answers))] == [p["prediction"] for p in predictions]
    assert (tmp / "LMUData" / "images" / DATASET / "0.png").exists()  # VLMEvalKit dumped the images itself
    assert (
        model.settings()
        == {
            "harness": "VLMEvalKit",
            "harness_version": None,  # not installed here
            "template": "vicuna_v1",
            "decoding": {"strategy": "greedy", "max_new_tokens": 24},
        }
        and model.skipped == 0
    )


def test_multiple_choice_prompts_and_interleaved_messages(exported, monkeypatch, tmp_path):
    tmp, _, _ = exported
    monkeypatch.setenv("LMUData", str(tmp / "LMUData"))
    image = tmp / "LMUData" / "images" / DATASET / "0.png"
    row = pd.Series({"index": 0, "image": "x" * 100, "question": "What colour?", "A": "red", "B": "blue", "hint": None})
    dataset = vlmeval.ImageDataset(DATASET, multiple_choice=True)
    message = dataset.build_prompt(row)  # the image is already dumped: read from its file
    question = message_question(message, "q")
    assert question.prompt == (
        "Question: What colour?\nOptions:\nA. red\nB. blue\nPlease select the correct answer from the options above."
    )
    assert question.image == [image.read_bytes()]
    interleaved = [
        {"type": "text", "value": "First:"},
        {"type": "image", "value": str(image)},
        {"type": "text", "value": "Second:"},
        {"type": "image", "value": str(image)},
        {"type": "text", "value": "Same picture?"},
    ]
    assert message_question(interleaved, "q").prompt == f"First:\n{IMAGE_TOKEN}\nSecond:\n{IMAGE_TOKEN}\nSame picture?"
    with pytest.raises(ValueError, match=r"lmm models read images and text, not \['video'\]"):
        message_question([{"type": "video", "value": "x.mp4"}, {"type": "text", "value": "?"}], "q")


def test_a_question_lmm_cannot_ask_is_answered_empty_and_counted(exported, tmp_path, capsys):
    tmp, _, _ = exported
    model = LmmVLMEval(model_path=str(tmp / "model"), device="cpu", max_new_tokens=4)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    message = [{"type": "image", "value": str(corrupt)}, {"type": "text", "value": "What is it?"}]
    assert vlmeval.generate(model, message, DATASET) == ""
    assert model.skipped == 1 and "could not be asked: image:" in capsys.readouterr().err
    missing = [{"type": "image", "value": str(tmp_path / "gone.png")}, {"type": "text", "value": "What is it?"}]
    assert model.generate_inner(missing, DATASET) == ""
    assert model.skipped == 2 and "could not be asked: image: FileNotFoundError" in capsys.readouterr().err
    text_only = vlmeval.generate(model, "How many sides has a square?", DATASET)
    assert isinstance(text_only, str) and model.skipped == 2
    with pytest.raises(ValueError, match="unknown arguments"):
        LmmVLMEval(model_path=str(tmp / "model"), temperature=0.7)
