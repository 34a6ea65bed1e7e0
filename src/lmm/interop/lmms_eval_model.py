"""lmms-eval's `lmm` model: any lmm run directory or lmm directory, every connector, tower and template.

    pip install -e '.[lmms-eval]'        (or: make install-lmms-eval)
    lmms-eval --model lmm --model_args pretrained=RUN_DIR_OR_LMM_DIR[,batch_size=16,device=cuda] --tasks ...

lmms-eval 0.7 finds the model through the `lmms_eval.models` entry point (pyproject.toml), which
returns `manifest()`. Requests are answered with lmm's own machinery: prompts rendered with the
run's template by its SampleProcessor (images first unless the prompt places their tags; several
images per request as in multi-image training), `generate_until` in batches
with the KV-cached generator (greedy unless the task asks for sampling), `loglikelihood` by
teacher forcing (multiple-choice tasks; returned as the negative log-likelihood, the "loss" that
lmms-eval's multiple_choice scoring minimises). A request lmm cannot ask (an unreadable image, a
prompt over the model's max length, tags that do not match its images) is answered "" (or an infinite loss),
counted, and the counts are printed at the end of each call: never a crash mid-evaluation.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image
from torch.utils.data import DataLoader

from lmm.data.collate import Collator
from lmm.data.conversation import IMAGE_TOKEN, images_first
from lmm.data.sample import Example, Skip, image_entries
from lmm.eval.generate import evaluating, generate_texts
from lmm.eval.likelihood import labelled_logprobs

MODEL_ID = "lmm"
DEFAULT_MAX_NEW_TOKENS = 128
HARNESS_ARGS = ("max_batch_size",)  # passed by lmms-eval's CLI to every model; lmm has no use for them


def manifest() -> ModelManifest:
    """What the `lmms_eval.models` entry point returns: the model id and its class."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LmmModel")


def image_sample(key: str, images: list) -> dict:
    """A shard-like sample for lmm's SampleProcessor: the images as lossless PNG bytes, so that
    they are decoded, checked and transformed exactly as training images are."""
    encoded = []
    for image in images:
        if isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        elif isinstance(image, (bytes, bytearray)):
            encoded.append(bytes(image))
        else:
            raise TypeError(f"a visual of type {type(image).__name__} (lmm models read images)")
    return {"__key__": key, **(image_entries(encoded) if encoded else {})}


def unquoted(value: str) -> str:
    """lmms-eval keeps the quotes that protect a value's commas (`pretrained='runs/x/connector=mlp,seed=0'`)."""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def cut_at_stops(text: str, until: list[str]) -> str:
    """The answer up to the first stop string the task gave (lmm already stops at end-of-turn)."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def generation_options(gen_kwargs: dict) -> tuple[list[str], int, dict]:
    """(stop strings, max new tokens, sampling options) from a task's generation_kwargs."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
    sampling = (
        {"do_sample": True, "temperature": temperature or 1.0, "top_p": float(gen_kwargs.get("top_p") or 1.0)}
        if do_sample
        else {}
    )
    return until, max_new_tokens, sampling


def distributed_position() -> tuple[int, int, torch.device | None]:
    """(rank, world size, this rank's device) under `accelerate launch` / torchrun; (0, 1, None) alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState  # initialises the process group lmms-eval gathers over

    state = PartialState()
    return state.process_index, state.num_processes, state.device


class LmmModel(lmms):
    """lmms-eval's simple-model interface over `lmm.load_pretrained`."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        batch_size: int | str = 8,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        **unknown,
    ):
        super().__init__()
        try:
            self._setup(pretrained, device, batch_size, max_new_tokens, unknown)
        except (ValueError, FileNotFoundError) as e:
            # lmms-eval prints any Exception from a model and exits 0; a bad model argument must fail the command.
            raise SystemExit(f"[lmm] lmms-eval --model lmm: {type(e).__name__}: {e}") from None

    def _setup(
        self, pretrained: str, device: str | None, batch_size: int | str, max_new_tokens: int, unknown: dict
    ) -> None:
        pretrained = unquoted(str(pretrained))
        unknown = {k: v for k, v in unknown.items() if k not in HARNESS_ARGS}
        if unknown:
            joined = ",".join([pretrained, *(f"{k}={v}" for k, v in unknown.items())])
            if any(Path(joined[:end]).exists() for end in range(len(pretrained) + 1, len(joined) + 1)):
                raise ValueError(
                    f"lmms-eval splits --model_args at commas, and the run directory has some: quote it, "
                    f"--model_args \"pretrained='{joined}'\""
                )
            raise ValueError(
                f"unknown model_args for --model lmm: {sorted(unknown)}; "
                "accepted: pretrained, device, batch_size, max_new_tokens"
            )
        from lmm.build.factory import load_pretrained

        self._rank, self._world_size, rank_device = distributed_position()
        if device in (None, "", "auto"):
            device = rank_device or ("cuda" if torch.cuda.is_available() else "cpu")
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device} asked for, but this machine has no CUDA device; pass device=cpu")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self.model, self.processor = load_pretrained(pretrained, self.device)
        self.tokenizer = self.processor.tokenizer

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _encode(
        self, context: str, doc_to_visual: Callable | None, doc: dict, key: str, answer: str | None = None
    ) -> Example | Skip:
        """The request as lmm's model input: the images first (as LLaVA's evaluation does), the
        run's template; with `answer`, the reply labelled for its log-likelihood."""
        try:
            images = [v for v in (doc_to_visual(doc) if doc_to_visual else None) or [] if v is not None]
            sample = image_sample(key, images)
        except Exception as e:  # a task's doc_to_visual failing on one document
            return Skip(key, f"image: {type(e).__name__}: {e}")
        prompt = context.strip()
        prompt = images_first(
            prompt, len(images)
        )  # (several images: all first, in order; tags in the prompt stay where they are)
        if not images:
            prompt = prompt.replace(IMAGE_TOKEN, "").strip()
        turns = [{"from": "human", "value": prompt}]
        if answer is None:
            return self.processor.encode(sample, turns, generation_prompt=True)
        return self.processor.encode(
            sample, turns + [{"from": "gpt", "value": answer.strip()}], label_end_of_turn=False
        )

    def _report(self, call: str, skips: list[Skip]) -> None:
        if skips:
            reasons = Counter(s.reason for s in skips)
            print(
                f"[lmm] {call}: {len(skips)} request(s) could not be asked: "
                + "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(5))
            )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        encoded = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            encoded.append(
                (self._encode(context, doc_to_visual, self._doc(task, split, doc_id), f"{task}/{doc_id}"), gen_kwargs)
            )
        answers: list[str] = [""] * len(requests)
        # One generation setting per group (a task's generation_kwargs), longest prompts first.
        groups: dict[str, list[int]] = {}
        for n, (_, gen_kwargs) in enumerate(encoded):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(n)
        for members in groups.values():
            until, max_new_tokens, sampling = generation_options(encoded[members[0]][1])
            if "max_new_tokens" not in encoded[members[0]][1]:
                max_new_tokens = self.default_max_new_tokens
            askable = sorted(
                (n for n in members if isinstance(encoded[n][0], Example)), key=lambda n: -len(encoded[n][0].input_ids)
            )
            loader = DataLoader(
                [encoded[n][0] for n in askable],
                batch_size=self.batch_size,
                collate_fn=Collator(self.tokenizer.pad_token_id, "left"),
            )
            with evaluating(self.model):
                texts = generate_texts(
                    self.model, loader, self.tokenizer, self.processor.template, max_new_tokens, self.device, **sampling
                )
            for n, text in zip(askable, texts, strict=True):
                answers[n] = cut_at_stops(text, until).strip()
        self._report("generate_until", [e for e, _ in encoded if isinstance(e, Skip)])
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        encoded = []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            answer = continuation if isinstance(continuation, str) else continuation(doc)
            encoded.append(self._encode(context, doc_to_visual, doc, f"{task}/{doc_id}", answer=str(answer)))
        askable = [n for n, e in enumerate(encoded) if isinstance(e, Example)]
        loader = DataLoader(
            [encoded[n] for n in askable],
            batch_size=self.batch_size,
            collate_fn=Collator(self.tokenizer.pad_token_id, "right"),
        )
        with evaluating(self.model):
            scores = labelled_logprobs(self.model, loader, self.device)
        # lmms-eval's multiple_choice picks the *smallest* value (its models return a loss; lmms-eval
        # issue #370), so this returns the answer's negative log-likelihood, summed over its tokens.
        # Wrapped in GenerationResult: 0.7.3's evaluator str()s any other non-string output.
        results = [GenerationResult(text=(float("inf"), False))] * len(requests)
        for n, (logprob, greedy) in zip(askable, scores, strict=True):
            results[n] = GenerationResult(
                text=(-logprob, greedy), token_counts=TokenCounts(input_tokens=len(encoded[n].input_ids))
            )
        self._report("loglikelihood", [e for e in encoded if isinstance(e, Skip)])
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("lmm answers one round per request; multi-round tasks are not supported yet")
