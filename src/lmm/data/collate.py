"""Collate Examples into a padded or a packed (padding-free) Batch; Skips are dropped and counted by reason."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import torch

from lmm.data.conversation import IGNORE_INDEX
from lmm.data.sample import Example, Skip

PACKING_KEYS = (
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
)  # what a packed batch adds for the attention


@dataclass
class Batch:
    """What the Collator makes and the model consumes. Tensors: input_ids, labels [B, T],
    attention_mask [B, T] (or None when packed), pixel_values [V, 3, S, S]: the images' views in
    the order of the image placeholders (a sample's several images one after another, each one
    view, or under AnyRes its overview and tiles; None without images), image_sizes [I, 2] (each
    image's height, width), instruction ids/mask [I, L] for instruction-aware connectors; packed batches (B =
    1) add position ids restarting per sample and the sample
    offsets. The rest is bookkeeping: per-sample meta and lengths, and the inputs skipped."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None
    instruction_ids: torch.Tensor | None = None
    instruction_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    cu_seq_lens_q: torch.Tensor | None = None
    cu_seq_lens_k: torch.Tensor | None = None
    max_length_q: int | None = None
    max_length_k: int | None = None
    meta: list[dict] = field(default_factory=list)
    sample_lengths: list[int] = field(default_factory=list)
    seen: int = 0  # inputs, skipped ones included
    skipped: dict[str, int] = field(default_factory=dict)  # reason kind -> count
    skip_details: list[str] = field(default_factory=list)  # "key: reason" per skipped input
    truncated: int = 0  # samples that lost trailing turns to fit max_length

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def images(self) -> int:
        if self.image_sizes is not None:
            return self.image_sizes.shape[0]
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]

    @property
    def views(self) -> int:
        """Tower inputs: one per image, or an AnyRes image's overview and tiles."""
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def attention_inputs(self) -> dict:
        """What the LLM needs to attend within samples: a padded batch's mask, or for a packed
        batch no mask but the position ids restarting per sample and the sample offsets."""
        if not self.packed:
            return {"attention_mask": self.attention_mask}
        return {
            "attention_mask": None,
            "position_ids": self.position_ids,
            **{key: getattr(self, key) for key in PACKING_KEYS},
        }

    def model_inputs(self, labels: bool = True) -> dict:
        """Keyword arguments for LMM.forward (LMM.generate with `labels=False`, padded batches only)."""
        inputs = {
            "input_ids": self.input_ids,
            "pixel_values": self.pixel_values,
            "image_sizes": self.image_sizes,
            "instruction_ids": self.instruction_ids,
            "instruction_mask": self.instruction_mask,
            **self.attention_inputs(),
        }
        return inputs | {"labels": self.labels} if labels else inputs

    def to(self, device: torch.device | str) -> "Batch":
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def replace(self, **changes) -> "Batch":
        return dataclasses.replace(self, **changes)


class Collator:
    """list[Example | Skip] -> Batch.

    `padding_side="left"` is for generation (new tokens follow the prompt directly); `packed=True`
    concatenates the samples into one row instead of padding them (data.packing).
    `skipped` maps reason kind -> count and `seen` counts every input, so the training loop can
    log every dropped sample and stop when too many are dropped; `truncated` counts samples
    that lost trailing turns to fit max_length.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", packed: bool = False):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.padding_side, self.packed = pad_token_id, padding_side, packed

    def __call__(self, items: list[Example | Skip]) -> Batch:
        examples = [x for x in items if isinstance(x, Example)]
        if self.packed:
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

    def _batch(self, items: list[Example | Skip], examples: list[Example], **tensors) -> Batch:
        """The token tensors plus what every batch carries: images in the order of their
        placeholders, per-sample meta and lengths, and the skip counts."""
        with_image = [x for x in examples if x.pixels is not None]
        if with_image and with_image[0].instructions is not None:
            tensors |= self._instructions([ids for x in with_image for ids in x.instructions])
        return Batch(
            **tensors,
            pixel_values=torch.cat([x.pixels for x in with_image])
            if with_image
            else None,  # [V, 3, S, S], samples' images in turn
            image_sizes=self._image_sizes(with_image),
            meta=[x.meta for x in examples],
            skipped=dict(Counter(x.kind for x in items if isinstance(x, Skip))),
            skip_details=[f"{x.key}: {x.reason}" for x in items if isinstance(x, Skip)],
            seen=len(items),
            truncated=sum(1 for x in examples if x.meta.get("truncated_turns")),
            sample_lengths=[len(x.input_ids) for x in examples],
        )

    def _packed(self, items: list[Example | Skip], examples: list[Example]) -> Batch:
        """Padding-free: the batch's samples concatenated into one row [1, Σn], no pad token at
        all and the same samples per step as padded batches. Position ids restart at each
        sample, whose first label is ignored so no prediction crosses a boundary; `cu_seq_lens`
        (sample offsets) let the attention stay within samples at the cost of each sample alone
        (lmm.model.attention, or flash-attention's varlen kernels, which read the same names)."""
        if not examples:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return self._batch(items, examples, input_ids=empty, attention_mask=empty, labels=empty, position_ids=empty)
        lengths = [len(x.input_ids) for x in examples]
        labels = [[IGNORE_INDEX, *x.labels[1:]] for x in examples]
        offsets = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)  # [S + 1]
        return self._batch(
            items,
            examples,
            input_ids=torch.tensor([t for x in examples for t in x.input_ids])[None],  # [1, Σn]
            attention_mask=torch.ones((1, offsets[-1]), dtype=torch.long),
            labels=torch.tensor([t for row in labels for t in row])[None],
            position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
            cu_seq_lens_q=offsets,
            cu_seq_lens_k=offsets,
            max_length_q=max(lengths),
            max_length_k=max(lengths),
        )

    @staticmethod
    def _image_sizes(with_image: list[Example]) -> torch.Tensor | None:
        """[I, 2] (height, width) per image, or None when the examples carry no sizes (one view each)."""
        if not with_image or any(x.image_sizes is None for x in with_image):
            return None
        return torch.tensor([size for x in with_image for size in x.image_sizes], dtype=torch.long).view(-1, 2)

    def _instructions(self, instructions: list[list[int]]) -> dict:
        """Right-padded question ids per image: instruction_ids, instruction_mask [I, L]."""
        length = max(map(len, instructions))
        ids = torch.full((len(instructions), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(instructions), length), dtype=torch.long)
        for row, instruction in enumerate(instructions):
            ids[row, : len(instruction)] = torch.tensor(instruction)
            mask[row, : len(instruction)] = 1
        return {"instruction_ids": ids, "instruction_mask": mask}
