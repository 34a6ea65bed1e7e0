"""VLMEvalKit's model API over lmm: `LmmVLMEval`, a `vlmeval.vlm.base.BaseModel` for any lmm run
directory or lmm directory (every connector, tower and template).

    pip install -e '.[vlmeval]'                     # VLMEvalKit from its repository (not on PyPI)

    # a launcher beside VLMEvalKit's run.py (or the same lines in vlmeval/config.py):
    from lmm.interop.vlmeval_model import register
    register("lmm_demo", "experiments/runs/demo_finetune/default", max_new_tokens=24)
    # then: python run.py --data MMBench_DEV_EN --model lmm_demo   (local TSV files under $LMUData)

VLMEvalKit builds each question as an interleaved message, a list of
`dict(type='image'|'text', value=...)` with images as files it dumped from the TSV's base64, and
calls `generate(message, dataset)`, which checks the message and calls `generate_inner`. Here
the message becomes lmm's own question (`lmm.eval.official.Question`): images first when the
message puts them first (as LLaVA's evaluation and `task=eval` ask), tags where they stand when
text comes between them; it is then answered by the same runner as every lmm benchmark (the
run's template, greedy decoding, KV cache). A question lmm cannot ask (an unreadable image, a
prompt over the model's max length) is answered "" and counted: never a crash mid-evaluation.
`settings()` (printed when the model loads) names the harness, its version, the template and
the decoding, for the record VLMEvalKit keeps of a run.
"""

from __future__ import annotations

import sys
from functools import partial
from importlib import metadata
from pathlib import Path

import torch

from lmm.data.conversation import IMAGE_TOKEN
from lmm.data.sample import Skip
from lmm.eval.answer import answer_questions
from lmm.eval.official import Question, question_example

try:  # VLMEvalKit installed: register with it as one of its own models
    from vlmeval.vlm.base import BaseModel
except ImportError:  # without it the class still answers messages (lmm's tests drive it so, offline)
    BaseModel = object

HARNESS = "VLMEvalKit"


def harness_version() -> str | None:
    try:
        return metadata.version("vlmeval")
    except metadata.PackageNotFoundError:
        return None


def message_question(message: list[dict], qid: str) -> Question:
    """An interleaved VLMEvalKit message as lmm's question: images (read from their files) in order;
    the text parts joined by newlines, with an image tag where an image stands between texts."""
    kinds = [item["type"] for item in message]
    unknown = set(kinds) - {"image", "text"}
    if unknown:  # before any file is read
        raise ValueError(f"lmm models read images and text, not {sorted(unknown)}")
    images = [Path(item["value"]).read_bytes() for item in message if item["type"] == "image"]
    first_text = kinds.index("text") if "text" in kinds else len(kinds)
    if "image" not in kinds[first_text:]:  # every image before the text: lmm puts them first itself
        prompt = "\n".join(item["value"] for item in message if item["type"] == "text")
    else:
        prompt = "\n".join(IMAGE_TOKEN if item["type"] == "image" else item["value"] for item in message)
    return Question(qid, prompt.strip(), images)


class LmmVLMEval(BaseModel):
    """`generate_inner(message, dataset)` -> the answer, one question at a time (VLMEvalKit's loop)."""

    INTERLEAVE = True  # several images per question, tags where they stand
    allowed_types = ["text", "image"]

    def __init__(self, model_path: str, device: str | None = None, max_new_tokens: int = 128, **unknown):
        if unknown:
            raise ValueError(f"unknown arguments for lmm's VLMEvalKit model: {sorted(unknown)}")
        if BaseModel is not object:
            super().__init__()
        from lmm.build.factory import load_pretrained

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_new_tokens = int(max_new_tokens)
        self.model, self.processor = load_pretrained(model_path, self.device)
        self.model.eval()
        self.asked, self.skipped = 0, 0
        print(f"[lmm] {HARNESS} model {model_path}: {self.settings()}", file=sys.stderr)

    def settings(self) -> dict:
        """What the answers depend on besides the weights: harness, version, template, decoding."""
        return {
            "harness": HARNESS,
            "harness_version": harness_version(),
            "template": self.processor.template,
            "decoding": {"strategy": "greedy", "max_new_tokens": self.max_new_tokens},
        }

    def use_custom_prompt(self, dataset) -> bool:
        return False  # the dataset's own prompt (VLMEvalKit's build_prompt), as for every model it lists

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        self.asked += 1
        qid = f"{dataset}/{self.asked}"
        try:
            question = message_question(message, qid)
        except OSError as e:  # an image file that is gone or unreadable: counted like a corrupt one
            answer = Skip(qid, f"image: {type(e).__name__}: {e}")
        else:
            (answer,) = answer_questions(
                self.model,
                self.processor,
                [question],
                partial(question_example, self.processor),
                batch_size=1,
                max_new_tokens=self.max_new_tokens,
                device=self.device,
            )
        if isinstance(answer, Skip):
            self.skipped += 1
            print(f"[lmm] {HARNESS}: question {self.skipped} could not be asked: {answer.reason}", file=sys.stderr)
            return ""
        return answer


def register(name: str, model_path: str, **kwargs) -> None:
    """Make `--model NAME` in VLMEvalKit's run.py this lmm model (VLMEvalKit's supported_VLM table)."""
    from vlmeval.config import supported_VLM

    supported_VLM[name] = partial(LmmVLMEval, model_path=model_path, **kwargs)
