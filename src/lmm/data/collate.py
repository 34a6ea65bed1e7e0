"""Collate Examples into a padded batch; Skips are dropped and counted by reason."""

from __future__ import annotations

from collections import Counter

import torch

from lmm.data.conversation import IGNORE_INDEX
from lmm.data.sample import Example, Skip


class Collator:
    """list[Example | Skip] -> {input_ids, attention_mask, labels [B, T], pixel_values [I, 3, S, S], ...}.

    `padding_side="left"` is for generation (new tokens follow the prompt directly).
    `skipped` maps reason kind -> count and `seen` counts every input, so the training loop can
    log every dropped sample and stop when too many are dropped; `truncated` counts samples
    that lost trailing turns to fit max_length.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pack_length: int | None = None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.padding_side, self.pack_length = pad_token_id, padding_side, pack_length

    def __call__(self, items: list[Example | Skip]) -> dict:
        examples = [x for x in items if isinstance(x, Example)]
        if self.pack_length:
            return self._packed(items, examples)
        length = max((len(x.input_ids) for x in examples), default=0)
        ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, x in enumerate(examples):
            n = len(x.input_ids)
            cols = slice(length - n, length) if self.padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(x.input_ids)
            labels[row, cols] = torch.tensor(x.labels)
            mask[row, cols] = 1
        return self._batch(items, examples, input_ids=ids, attention_mask=mask, labels=labels)  # [B, T] each

    def _batch(self, items: list[Example | Skip], examples: list[Example], **tensors: torch.Tensor) -> dict:
        """The token tensors plus what every batch carries: images in the order of their
        placeholders, per-sample meta and lengths, and the skip counts."""
        with_image = [x for x in examples if x.pixels is not None]
        batch = {
            **tensors,
            "pixel_values": torch.stack([x.pixels for x in with_image]) if with_image else None,  # [I, 3, S, S]
            "meta": [x.meta for x in examples],
            "skipped": dict(Counter(x.kind for x in items if isinstance(x, Skip))),
            "skip_details": [f"{x.key}: {x.reason}" for x in items if isinstance(x, Skip)],
            "seen": len(items),
            "truncated": sum(1 for x in examples if x.meta.get("truncated_turns")),
            "sample_lengths": [len(x.input_ids) for x in examples],
        }
        if with_image and with_image[0].instruction is not None:
            batch.update(self._instructions([x.instruction for x in with_image]))
        return batch

    def _packed(self, items: list[Example | Skip], examples: list[Example]) -> dict:
        """Several samples per row (first-fit decreasing into rows of pack_length tokens):
        position ids restart at each sample, whose first label is ignored so no prediction
        crosses a boundary; images follow the order of their placeholders (row-major). The
        model attends within samples only (block-diagonal causal mask from the position ids)."""
        rows: list[list[Example]] = []
        space: list[int] = []
        for x in sorted(examples, key=lambda x: len(x.input_ids), reverse=True):
            n = len(x.input_ids)
            if n > self.pack_length:
                raise ValueError(f"a {n}-token sample does not fit data.max_length={self.pack_length}")
            row = next((i for i, free in enumerate(space) if free >= n), None)
            if row is None:
                rows.append([]), space.append(self.pack_length)
                row = len(rows) - 1
            rows[row].append(x)
            space[row] -= n
        length = max((self.pack_length - free for free in space), default=0)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        positions = torch.zeros((len(rows), length), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for x in row:
                n = len(x.input_ids)
                ids[r, start : start + n] = torch.tensor(x.input_ids)
                labels[r, start : start + n] = torch.tensor(x.labels)
                labels[r, start] = IGNORE_INDEX
                mask[r, start : start + n] = 1
                positions[r, start : start + n] = torch.arange(n)
                start += n
            positions[r, start:] = torch.arange(length - start)  # padding: a block of its own
        ordered = [x for row in rows for x in row]  # row-major: the order of the image placeholders
        return self._batch(items, ordered, input_ids=ids, attention_mask=mask, labels=labels, position_ids=positions)

    def _instructions(self, instructions: list[list[int]]) -> dict:
        """Right-padded question ids per image: instruction_ids, instruction_mask [I, L]."""
        length = max(map(len, instructions))
        ids = torch.full((len(instructions), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(instructions), length), dtype=torch.long)
        for row, instruction in enumerate(instructions):
            ids[row, : len(instruction)] = torch.tensor(instruction)
            mask[row, : len(instruction)] = 1
        return {"instruction_ids": ids, "instruction_mask": mask}
