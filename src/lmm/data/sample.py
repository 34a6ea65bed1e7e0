"""Turn one raw shard sample into model inputs (pixels, input_ids, labels), or a counted skip."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmm.data.conversation import IMAGE_TOKEN, ConversationError, encode
from lmm.data.image import ImageTransform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Skip:
    """A sample that could not be used, with the reason; collate counts these instead of crashing."""

    key: str
    reason: str


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pixels: torch.Tensor | None  # [3, S, S] or None for text-only samples
    meta: dict = field(default_factory=dict)
    instruction: list[int] | None = None  # the image's question, for instruction-aware connectors


class SampleProcessor:
    """Decode the image, render + tokenize the conversation; never raises on bad samples."""

    def __init__(
        self,
        tokenizer,
        template: str,
        image_transform: ImageTransform,
        image_tokens: int,
        max_length: int,
        instruction_length: int | None = None,
    ):
        """`instruction_length`: also tokenize the image's question (first `<image>` turn, tag
        removed) up to this many tokens, for instruction-aware connectors (InstructBLIP)."""
        self.tokenizer, self.template = tokenizer, template
        self.image_transform, self.image_tokens, self.max_length = image_transform, image_tokens, max_length
        self.instruction_length = instruction_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def instruction(self, turns: list[dict]) -> list[int] | None:
        if self.instruction_length is None:
            return None
        text = next((t["value"] for t in turns if IMAGE_TOKEN in t["value"]), "").replace(IMAGE_TOKEN, "").strip()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.instruction_length]
        return ids or [self.tokenizer.pad_token_id]  # an image with no question still gets one (masked-in) token

    def image_bytes(self, sample: dict) -> bytes | None:
        return next((sample[k] for k in IMAGE_KEYS if k in sample), None)

    def encode(self, sample: dict, turns: list[dict], generation_prompt: bool = False, meta: dict | None = None) -> Example | Skip:
        key = sample.get("__key__", "?")
        try:
            data = self.image_bytes(sample)
            pixels = None if data is None else self.image_transform(data)
            enc = encode(
                self.tokenizer, self.template, turns, self.image_tokens, self.image_token_id,
                max_length=self.max_length, generation_prompt=generation_prompt,
            )
        except ConversationError as e:
            return Skip(key, f"conversation: {e}")
        except Exception as e:  # PIL raises many types for corrupt/truncated images
            return Skip(key, f"image: {type(e).__name__}: {e}")
        if enc.num_images != (0 if pixels is None else 1):
            return Skip(key, f"conversation: {enc.num_images} <image> tokens in the text but {0 if pixels is None else 1} images")
        instruction = self.instruction(turns) if pixels is not None else None
        return Example(enc.input_ids, enc.labels, pixels, meta or {}, instruction)

    def __call__(self, sample: dict) -> Example | Skip:
        """A training sample: the whole conversation."""
        record = sample.get("json")
        if not isinstance(record, dict) or "conversations" not in record:
            return Skip(sample.get("__key__", "?"), "json: missing or without 'conversations'")
        return self.encode(sample, record["conversations"], meta={"id": record.get("id"), "source": record.get("source")})
