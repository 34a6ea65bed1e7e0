"""Each benchmark reads a schema-exact miniature of its official files, prompts as LLaVA-1.5
does, and scores scripted answers to hand-computed values."""

import base64
import io
import json

import pytest
import torch
from PIL import Image

from lmm.data.image import ImageTransform
from lmm.data.sample import SampleProcessor
from lmm.eval import answer
from lmm.eval.official import GQA, MME, POPE, MMBench, RefCOCO, ScienceQAImg, SEEDBench, TextVQA, VizWiz, VQAv2


def jpeg(path, size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path, format="JPEG")


@pytest.fixture
def scripted(monkeypatch, tokenizer):
    """Run a benchmark with answers given by question id instead of a model."""
    processor = SampleProcessor(
        tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=2, max_length=1024
    )
    prompts = {}

    def run(benchmark, answers: dict, out_dir=None):
        def fake_generate(model, loader, tokenizer, template, max_new_tokens, device):
            out = []
            for batch in loader:
                out += [answers[m["qid"]] for m in batch.meta]
            return out

        monkeypatch.setattr(answer, "generate_texts", fake_generate)
        for q in benchmark.questions():
            prompts[q.qid] = q.prompt
        return benchmark.run(torch.nn.Module(), processor, out_dir=out_dir)

    run.prompts = prompts
    return run


def test_vqav2_soft_accuracy_and_submission(tmp_path, scripted):
    jpeg(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    (tmp_path / "q.json").write_text(
        json.dumps(
            {
                "questions": [
                    {"image_id": 1, "question": "How many dogs?", "question_id": 10},
                    {"image_id": 1, "question": "Is it sunny?", "question_id": 11},
                ]
            }
        )
    )
    answer = lambda a, i: {"answer": a, "answer_confidence": "yes", "answer_id": i}  # noqa: E731
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "question_id": 10,
                        "image_id": 1,
                        "question_type": "how many",
                        "answer_type": "number",
                        "multiple_choice_answer": "2",
                        "answers": [answer("2", i) for i in range(4)] + [answer("3", i) for i in range(4, 10)],
                    },
                    {
                        "question_id": 11,
                        "image_id": 1,
                        "question_type": "is it",
                        "answer_type": "yes/no",
                        "multiple_choice_answer": "no",
                        "answers": [answer("yes", i) for i in range(2)] + [answer("no", i) for i in range(2, 10)],
                    },
                ]
            }
        )
    )
    bench = VQAv2(str(tmp_path), questions="q.json", annotations="a.json", submission=str(tmp_path / "sub.json"))
    result = scripted(bench, {10: "Two", 11: "Yes."}, out_dir=tmp_path / "pred")
    # q10: "two" -> "2" matches 4 humans: every leave-one-out subset has >= 3 -> 1.0
    # q11: "yes" matches 2: subsets without a "yes" voter: 8 x 2/3, with: 2 x 1/3 -> 0.6
    assert result["metrics"]["accuracy"] == pytest.approx(0.8)
    assert scripted.prompts[10] == "How many dogs?\nAnswer the question using a single word or phrase."
    assert json.loads((tmp_path / "sub.json").read_text()) == [
        {"question_id": 10, "answer": "2"},
        {"question_id": 11, "answer": "yes"},
    ]
    assert len((tmp_path / "pred" / "vqav2.jsonl").read_text().splitlines()) == 2


def test_gqa_vizwiz_textvqa(tmp_path, scripted):
    jpeg(tmp_path / "images" / "n1.jpg")
    (tmp_path / "g.json").write_text(
        json.dumps(
            {
                "201": {
                    "question": "Is it overcast?",
                    "imageId": "n1",
                    "answer": "yes",
                    "fullAnswer": "Yes, it is.",
                    "types": {},
                },
                "202": {
                    "question": "Which animal?",
                    "imageId": "n1",
                    "answer": "dog",
                    "fullAnswer": "It is a dog.",
                    "types": {},
                },
            }
        )
    )
    assert scripted(GQA(str(tmp_path), questions="g.json"), {"201": "Yes.", "202": "cat"})["metrics"]["accuracy"] == 0.5

    jpeg(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    (tmp_path / "val.json").write_text(
        json.dumps(
            [
                {
                    "image": "VizWiz_val_00000000.jpg",
                    "question": "What is this?",
                    "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
                    "answerable": 0,
                    "answer_type": "unanswerable",
                }
            ]
        )
    )
    result = scripted(VizWiz(str(tmp_path)), {"VizWiz_val_00000000.jpg": "Unanswerable"})
    assert result["metrics"]["accuracy"] == 1.0
    assert "respond with 'Unanswerable'" in scripted.prompts["VizWiz_val_00000000.jpg"]

    jpeg(tmp_path / "train_images" / "abc.jpg")
    (tmp_path / "t.json").write_text(
        json.dumps(
            {
                "data": [
                    {
                        "question_id": 5,
                        "question": "what brand?",
                        "image_id": "abc",
                        "answers": ["nokia"] * 3 + ["samsung"] * 7,
                    }
                ]
            }
        )
    )
    (tmp_path / "ocr.json").write_text(json.dumps({"data": [{"image_id": "abc", "ocr_tokens": ["nokia", "3310"]}]}))
    with_ocr = TextVQA(str(tmp_path), questions="t.json", ocr="ocr.json")
    result = scripted(with_ocr, {5: "Nokia"})
    assert (
        scripted.prompts[5]
        == "what brand?\nReference OCR token: nokia, 3310\nAnswer the question using a single word or phrase."
    )
    assert result["metrics"]["accuracy"] == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    without = TextVQA(str(tmp_path), questions="t.json", ocr="missing.json", ocr_tokens=False)
    scripted(without, {5: "nokia"})
    assert "OCR" not in scripted.prompts[5]


def test_scienceqa_pope_seed(tmp_path, scripted):
    jpeg(tmp_path / "test" / "7" / "image.png")
    (tmp_path / "problems.json").write_text(
        json.dumps(
            {
                "7": {
                    "question": "Which is a mammal?",
                    "choices": ["frog", "whale", "shark"],
                    "answer": 1,
                    "hint": "Look closely.",
                    "image": "image.png",
                    "split": "test",
                },
                "8": {
                    "question": "No image",
                    "choices": ["a", "b"],
                    "answer": 0,
                    "hint": "",
                    "image": None,
                    "split": "test",
                },
                "9": {
                    "question": "Train",
                    "choices": ["a", "b"],
                    "answer": 0,
                    "hint": "",
                    "image": "image.png",
                    "split": "train",
                },
            }
        )
    )
    result = scripted(ScienceQAImg(str(tmp_path)), {"7": "The answer is B."})
    assert result["n"] == 1 and result["metrics"]["accuracy"] == 1.0
    assert scripted.prompts["7"] == (
        "Context: Look closely.\nWhich is a mammal?\nA. frog\nB. whale\nC. shark\n"
        "Answer with the option's letter from the given choices directly."
    )

    jpeg(tmp_path / "val2014" / "COCO_val2014_000000310196.jpg")
    lines = [
        {"question_id": i, "image": "COCO_val2014_000000310196.jpg", "text": f"Is there a thing {i}?", "label": label}
        for i, label in enumerate(["yes", "yes", "no", "no"], 1)
    ]
    (tmp_path / "coco_pope_random.json").write_text("\n".join(json.dumps(x) for x in lines))
    result = scripted(
        POPE(str(tmp_path), splits=["random"]),
        {"random/1": "Yes, there is.", "random/2": "No.", "random/3": "There is not a dog.", "random/4": "yes"},
    )
    assert result["metrics"] == {
        "random/accuracy": 0.5,
        "random/precision": 0.5,
        "random/recall": 0.5,
        "random/f1": 0.5,
        "random/yes_ratio": 0.5,
    }

    jpeg(tmp_path / "SEED-Bench-image" / "1_2.jpg")
    (tmp_path / "SEED-Bench.json").write_text(
        json.dumps(
            {
                "questions": [
                    {
                        "question_id": "q1",
                        "question": "Color?",
                        "choice_a": "red",
                        "choice_b": "blue",
                        "choice_c": "g",
                        "choice_d": "y",
                        "answer": "A",
                        "data_id": "1_2.jpg",
                        "data_type": "image",
                        "question_type_id": 1,
                    },
                    {
                        "question_id": "q2",
                        "question": "Video?",
                        "choice_a": "a",
                        "choice_b": "b",
                        "choice_c": "c",
                        "choice_d": "d",
                        "answer": "B",
                        "data_id": "v.mp4",
                        "data_type": "video",
                        "question_type_id": 10,
                    },
                ]
            }
        )
    )
    result = scripted(SEEDBench(str(tmp_path)), {"q1": "A"})
    assert result["n"] == 1 and result["metrics"] == {"accuracy": 1.0, "type1/accuracy": 1.0}


def test_mme_both_layouts(tmp_path, scripted):
    for name in ("a", "b"):
        jpeg(tmp_path / "existence" / f"{name}.jpg")
        (tmp_path / "existence" / f"{name}.txt").write_text(
            "Is there a dog? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n"
        )
    jpeg(tmp_path / "code_reasoning" / "images" / "c.png")
    (tmp_path / "code_reasoning" / "questions_answers_YN").mkdir(parents=True)
    (tmp_path / "code_reasoning" / "questions_answers_YN" / "c.txt").write_text("Prints 3?\tYes\nPrints 4?\tNo\n")
    answers = {
        "existence/a/0": "Yes",
        "existence/a/1": "No",
        "existence/b/0": "Yes",
        "existence/b/1": "Yes, a cat.",
        "code_reasoning/c/0": "yes",
        "code_reasoning/c/1": "no",
    }
    m = scripted(MME(str(tmp_path)), answers)["metrics"]
    # existence: 3/4 right = 75, images fully right 1/2 = 50 -> 125; code_reasoning: 100 + 100
    assert m["existence/accuracy"] == 75.0 and m["existence/accuracy_plus"] == 50.0 and m["existence/score"] == 125.0
    assert m["perception"] == 125.0 and m["cognition"] == 200.0


def test_mmbench_circular(tmp_path, scripted):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit"
    row = f"0\tWhich is red?\tnan\tapple\tsky\tgrass\tnan\tA\tcolor\t{image}\tx\ty\tnan\tdev"
    (tmp_path / "mmbench_dev_20230712.tsv").write_text(header + "\n" + row + "\n")
    # Rotations: 0 -> apple is A; 1 -> [sky, grass, apple]: C; 2 -> [grass, apple, sky]: B
    result = scripted(MMBench(str(tmp_path)), {"0/0": "A", "0/1": "C.", "0/2": "A"})
    assert result["metrics"] == {"accuracy": 1.0, "circular_accuracy": 0.0}
    result = scripted(MMBench(str(tmp_path)), {"0/0": "A", "0/1": "C", "0/2": "(B)"})
    assert result["metrics"]["circular_accuracy"] == 1.0


def test_refcoco_boxes_in_the_padded_frame(tmp_path, scripted):
    jpeg(tmp_path / "train2014" / "COCO_train2014_000000000009.jpg", size=(200, 100))
    (tmp_path / "refcoco_val.jsonl").write_text(
        json.dumps(
            {
                "image": "COCO_train2014_000000000009.jpg",
                "sentence": "man in red",
                "bbox": [50, 0, 50, 50],
                "width": 200,
                "height": 100,
            }
        )
    )
    bench = RefCOCO(str(tmp_path))
    (q,) = bench.questions()
    assert q.gold == [0.25, 0.25, 0.5, 0.5]  # padded to 200x200: 50px band above
    result = scripted(bench, {0: "[0.25, 0.25, 0.50, 0.50]"})
    assert result["metrics"] == {"acc_iou50": 1.0, "unparsed": 0.0}
    assert scripted(bench, {0: "somewhere"})["metrics"] == {"acc_iou50": 0.0, "unparsed": 1.0}


def test_missing_file_says_where_it_comes_from(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="testdev_balanced_questions.json; it comes from https://cs.stanford.edu"
    ):
        GQA(str(tmp_path)).questions()
