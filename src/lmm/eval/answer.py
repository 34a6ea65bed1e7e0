"""Answering questions: the one runner every benchmark and `lmm.commands.predict` use.

Each rank encodes and answers every world-th question (`questions[rank::world]`) in batches
with the KV-cached greedy generator; the answers are gathered so that every rank holds all of
them in the questions' order; rank 0 writes the predictions file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.data import DataLoader

from lmm.core.ranks import is_main_process, rank_and_world
from lmm.data.collate import Collator
from lmm.data.sample import Example, SampleProcessor, Skip
from lmm.eval.generate import evaluating, generate_texts
from lmm.model.lmm import LMM

Q = TypeVar("Q")


def gather_strided(mine: list, world: int) -> list:
    """Undo a `items[rank::world]` split: every rank gets all results in the original order."""
    if world == 1:
        return mine
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    return [parts[i % world][i // world] for i in range(sum(len(p) for p in parts))]


@torch.no_grad()
def answer_questions(
    model: LMM,
    processor: SampleProcessor,
    questions: Sequence[Q],
    encode: Callable[[Q], Example | Skip],
    batch_size: int,
    max_new_tokens: int,
    device: torch.device | str = "cpu",
) -> list[str | Skip]:
    """For each question, in order and on every rank: its answer, or the Skip saying why it
    could not be asked (unreadable image, too long). A collective when distributed: every rank
    calls it with the same questions."""
    rank, world = rank_and_world()
    mine = [encode(q) for q in questions[rank::world]]
    examples = [e for e in mine if isinstance(e, Example)]
    tokenizer = processor.tokenizer
    loader = DataLoader(examples, batch_size=batch_size, collate_fn=Collator(tokenizer.pad_token_id, "left"))
    with evaluating(model):
        answers = iter(generate_texts(model, loader, tokenizer, processor.template, max_new_tokens, device))
    return gather_strided([next(answers) if isinstance(e, Example) else e for e in mine], world)


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON line per record, written by rank 0 only."""
    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record, default=str) + "\n")


def write_predictions(out_dir: Path, name: str, records: list[dict]) -> None:
    """predictions/<benchmark>.jsonl: one JSON line per question (written by rank 0 only)."""
    write_jsonl(Path(out_dir) / f"{name}.jsonl", records)
