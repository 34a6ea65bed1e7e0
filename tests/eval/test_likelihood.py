"""Answer log-likelihoods: the reply alone labelled, and teacher-forced sums that do not depend on padding."""

import pytest
import torch

from lmm.build.factory import build_run
from lmm.data.collate import Collator
from lmm.data.sample import Example
from lmm.eval.likelihood import labelled_logprobs
from tests.conftest import compose_config


def reply_labels(processor, question: str, answer: str, sample: dict) -> Example:
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return processor.encode(sample, turns, label_end_of_turn=False)


def test_label_end_of_turn_false_labels_the_reply_alone(data_root):
    cfg = compose_config([], data_root)
    _, processor = build_run(cfg, load_weights=False)
    turns = [{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "red"}]
    trained = processor.encode({}, turns)
    reply_only = processor.encode({}, turns, label_end_of_turn=False)
    assert trained.input_ids == reply_only.input_ids
    tokenizer = processor.tokenizer
    labelled = lambda e: tokenizer.decode([t for t in e.labels if t != -100])  # noqa: E731
    assert labelled(trained).strip().startswith("red") and labelled(trained) != labelled(reply_only)
    assert labelled(reply_only).strip() == "red"


def test_labelled_logprobs_equal_cross_entropy_whatever_the_padding(data_root):
    cfg = compose_config([], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    model.eval()
    examples = [
        reply_labels(processor, "Which shape?", answer, {}) for answer in ("circle", "a red square at the top left")
    ]
    together = labelled_logprobs(model, [Collator(processor.tokenizer.pad_token_id)(examples)])
    for example, (logprob, _) in zip(examples, together, strict=True):
        ids = torch.tensor([example.input_ids])
        labels = torch.tensor(example.labels[1:])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids)).logits[0, :-1]
        expected = -torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        assert logprob == pytest.approx(float(expected), abs=1e-4)
