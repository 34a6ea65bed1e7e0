"""Batched greedy generation over left-padded batches, decoded to text."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from lmm.data.collate import Batch
from lmm.data.conversation import TEMPLATES
from lmm.model.lmm import LMM


def end_of_turn_ids(tokenizer, template: str) -> list[int]:
    """Stop tokens: EOS, plus the template's end-of-turn when it is one token (`<|im_end|>`, `<|eot_id|>`)."""
    stops = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if template in TEMPLATES:
        ids = tokenizer(TEMPLATES[template].end_of_turn, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in stops:
            stops.append(ids[0])
    return stops


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then back to whatever mode the model was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_texts(
    model: LMM,
    batches: Iterable[Batch],
    tokenizer,
    template: str,
    max_new_tokens: int,
    device: torch.device | str = "cpu",
    **sampling,
) -> list[str]:
    """Answers for every row of every batch, in order. Batches must be left-padded. Greedy unless
    `sampling` asks otherwise (do_sample, temperature, top_p: LMM.generate's options)."""
    answers: list[str] = []
    for batch in batches:
        if not batch.rows:
            continue
        new_ids = model.generate(
            **batch.to(device).model_inputs(labels=False),
            max_new_tokens=max_new_tokens,
            eos_token_ids=end_of_turn_ids(tokenizer, template),
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )  # [B, ≤max_new_tokens]
        answers += [text.strip() for text in tokenizer.batch_decode(new_ids, skip_special_tokens=True)]
    return answers
