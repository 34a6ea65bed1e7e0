"""The one question runner: answers in the questions' order, Skips in place, every rank holds all."""

import torch

from lmm.data.sample import Example, Skip
from lmm.eval import answer
from lmm.eval.answer import answer_questions, gather_strided


class Processor:
    template, tokenizer = "plain", type("Tokenizer", (), {"pad_token_id": 0})()


def test_answers_follow_the_questions_and_skips_stay_in_place(monkeypatch):
    asked = []

    def fake_generate(model, loader, tokenizer, template, max_new_tokens, device):
        out = []
        for batch in loader:
            asked.append(batch.rows)
            out += [f"answer {m['q']}" for m in batch.meta]
        return out

    monkeypatch.setattr(answer, "generate_texts", fake_generate)

    def encode(q: int):
        if q % 3 == 1:
            return Skip(str(q), "image: unreadable")
        return Example(input_ids=[1, 2, 3], labels=[-100] * 3, pixels=None, meta={"q": q})

    results = answer_questions(
        torch.nn.Linear(1, 1), Processor(), list(range(7)), encode, batch_size=2, max_new_tokens=4
    )
    assert [r if isinstance(r, str) else r.reason for r in results] == [
        "answer 0",
        "image: unreadable",
        "answer 2",
        "answer 3",
        "image: unreadable",
        "answer 5",
        "answer 6",
    ]
    assert asked == [2, 2, 1]  # five askable questions in batches of two


def test_gather_strided_undoes_the_rank_split(monkeypatch):
    items = list(range(11))
    shares = [items[rank::3] for rank in range(3)]

    def all_gather_object(parts, mine):
        parts[:] = shares

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    assert gather_strided(shares[1], 3) == items
