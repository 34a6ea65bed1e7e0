"""Turn one raw shard sample into model inputs (pixels, input_ids, labels), or a counted skip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from lmm.data.conversation import IMAGE_TOKEN, ConversationError, ConversationTooLong, encode
from lmm.data.image import ImageError, ImageTransform
from lmm.data.shards import ERROR_KEY
from lmm.data.sources import strip_format_prompts

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")


@dataclass
class Skip:
    """A sample that could not be used; `reason` starts with its kind (`image:`, `json:`,
    `conversation:`, `shard:`), which is what the training loop counts and logs."""

    key: str
    reason: str

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pixels: torch.Tensor | None  # [3, S, S] or None for text-only samples
    meta: dict = field(default_factory=dict)
    instruction: list[int] | None = None  # the image's question, for instruction-aware connectors


def decode_json(raw: bytes | bytearray):
    """UTF-8 JSON bytes as a value; ValueError says what is wrong, and where."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed ({e.msg} at {e.pos})") from None


def parse_record(value) -> dict:
    """The sample's JSON (bytes from a shard, or an already-decoded dict)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = decode_json(value)
        except ValueError as e:
            raise ValueError(f"json: {e}") from None
    if not isinstance(value, dict) or not isinstance(value.get("conversations"), list):
        raise ValueError("json: missing, or without a 'conversations' list")
    return value


class SampleProcessor:
    """Decode the image, render + tokenize the conversation; never raises on bad samples.

    Too-long conversations lose whole trailing exchanges until they fit (image tokens are
    never cut; `meta["truncated_turns"]` says how many turns went); if even the first exchange
    does not fit, the sample is skipped.
    """

    def __init__(
        self,
        tokenizer,
        template: str,
        image_transform: ImageTransform,
        image_tokens: int,
        max_length: int,
        instruction_length: int | None = None,
        strip_format_prompts: bool = False,
    ):
        """`instruction_length`: also tokenize the image's question (first `<image>` turn, tag
        removed) up to this many tokens, for instruction-aware connectors (InstructBLIP).
        `strip_format_prompts`: remove response-format prompts (the paper's ablation row)."""
        self.tokenizer, self.template = tokenizer, template
        self.image_transform, self.image_tokens, self.max_length = image_transform, image_tokens, max_length
        self.instruction_length, self.strip_format_prompts = instruction_length, strip_format_prompts
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def image_bytes(self, sample: dict) -> bytes | None:
        return next((sample[k] for k in IMAGE_KEYS if k in sample), None)

    def instruction(self, turns: list[dict]) -> list[int] | None:
        if self.instruction_length is None:
            return None
        text = next((t["value"] for t in turns if IMAGE_TOKEN in t["value"]), "").replace(IMAGE_TOKEN, "").strip()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.instruction_length]
        return ids or [self.tokenizer.pad_token_id]  # an image with no question still gets one token

    def _encode_fitting(self, turns: list[dict], generation_prompt: bool, label_end_of_turn: bool = True):
        dropped = 0
        while True:
            try:
                return encode(
                    self.tokenizer, self.template, turns, self.image_tokens, self.image_token_id,
                    max_length=self.max_length, generation_prompt=generation_prompt, label_end_of_turn=label_end_of_turn,
                ), dropped
            except ConversationTooLong:
                # Drop the last exchange, but never the first (it carries the image).
                if len(turns) <= (1 if generation_prompt else 2):
                    raise
                turns, dropped = turns[:-2], dropped + 2

    def encode(
        self, sample: dict, turns: list[dict], generation_prompt: bool = False, meta: dict | None = None, label_end_of_turn: bool = True
    ) -> Example | Skip:
        """`label_end_of_turn=False`: label the replies without their end-of-turn (answer log-likelihoods)."""
        key = sample.get("__key__", "?")
        try:
            if self.strip_format_prompts:
                turns = strip_format_prompts(turns)
            data = self.image_bytes(sample)
            pixels = None if data is None else self.image_transform(data)
            enc, dropped = self._encode_fitting(turns, generation_prompt, label_end_of_turn)
        except ConversationError as e:
            return Skip(key, f"conversation: {e}")
        except ImageError as e:
            return Skip(key, f"image: {e}")
        except Exception as e:  # anything else a hostile sample can trigger
            return Skip(key, f"sample: {type(e).__name__}: {e}")
        if enc.num_images != (0 if pixels is None else 1):
            return Skip(key, f"conversation: {enc.num_images} <image> tokens in the text but {0 if pixels is None else 1} images")
        meta = {**(meta or {}), **({"truncated_turns": dropped} if dropped else {})}
        instruction = self.instruction(turns) if pixels is not None else None
        return Example(enc.input_ids, enc.labels, pixels, meta, instruction)

    def __call__(self, sample: dict) -> Example | Skip:
        """A training sample: the whole conversation."""
        key = sample.get("__key__", "?")
        if ERROR_KEY in sample:
            return Skip(key, sample[ERROR_KEY])
        try:
            record = parse_record(sample.get("json"))
        except ValueError as e:
            return Skip(key, str(e))
        return self.encode(sample, record["conversations"], meta={"id": record.get("id"), "source": record.get("source"), "key": key})
