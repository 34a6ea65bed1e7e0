"""Turn one raw shard sample into model inputs (pixels, input_ids, labels), or a counted skip."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmm.data.conversation import IMAGE_TOKEN, ConversationError, ConversationTooLong, encode
from lmm.data.image import ImageError, ImageTransform
from lmm.data.shards import ERROR_KEY
from lmm.data.sources import strip_format_prompts

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")


def image_keys(sample: dict) -> list[str]:
    """The sample's image entries in order: one `jpg`/`png`/... entry (LLaVA's one image), or
    numbered ones, `0.jpg`, `1.png`, ... (several images, bound in order to the `<image>` tags).
    ImageError for a sample with both forms or a gap in the numbers."""
    single = [k for k in IMAGE_KEYS if k in sample]
    numbered = {}
    for key in sample:
        index, _, extension = key.partition(".")
        if index.isdigit() and extension in IMAGE_KEYS:
            numbered[int(index)] = key
    if len(single) > 1 or (single and numbered):
        raise ImageError(f"entries {sorted(single + list(numbered.values()))} are not one image nor a numbered list")
    if sorted(numbered) != list(range(len(numbered))):
        raise ImageError(
            f"numbered entries {sorted(numbered.values())} skip a number (expected 0.<ext> … {len(numbered) - 1}.<ext>)"
        )
    return single or [numbered[i] for i in range(len(numbered))]


def image_entries(images: list[bytes]) -> dict[str, bytes]:
    """Encoded images as a sample's entries, the inverse of image_keys: one is `jpg` (the key is a
    name only: the bytes say the format), several are `0.jpg`, `1.jpg`, ..."""
    return {"jpg": images[0]} if len(images) == 1 else {f"{i}.jpg": data for i, data in enumerate(images)}


def count_images(sample: dict) -> int:
    """How many images a raw sample holds, from its keys alone (0 for one it cannot tell)."""
    try:
        return len(image_keys(sample))
    except ImageError:
        return 0


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
    pixels: (
        torch.Tensor | None
    )  # [V, 3, S, S]: the images' views in the order of their <image> tags; None for text-only
    meta: dict = field(default_factory=dict)
    instructions: list[list[int]] | None = None  # each image's question, for instruction-aware connectors
    image_sizes: list[tuple[int, int]] | None = None  # each image's (height, width); several views each under AnyRes

    @property
    def num_images(self) -> int:
        if self.image_sizes is not None:
            return len(self.image_sizes)
        return 0 if self.pixels is None else self.pixels.shape[0]  # one view per image


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
    does not fit, or the next to go holds an image, the sample is skipped.

    Several images: numbered entries (`0.jpg`, `1.png`, ...; see image_keys), bound in order to
    the `<image>` tags wherever they stand in the turns; a count that differs is a counted skip.
    """

    def __init__(
        self,
        tokenizer,
        template: str,
        image_transform: ImageTransform,
        image_tokens: int | Callable[[int, int], int],
        max_length: int,
        instruction_length: int | None = None,
        strip_format_prompts: bool = False,
    ):
        """`image_tokens`: visual tokens per image, or (AnyRes) a function of its (height, width).
        `instruction_length`: also tokenize each image's question (the turn that holds its
        `<image>` tag, tags removed) up to this many tokens, for instruction-aware connectors (InstructBLIP).
        `strip_format_prompts`: remove response-format prompts (the paper's ablation row)."""
        self.tokenizer, self.template = tokenizer, template
        self.image_transform, self.image_tokens, self.max_length = image_transform, image_tokens, max_length
        self.tokens_for = image_tokens if callable(image_tokens) else lambda height, width: image_tokens
        self.instruction_length, self.strip_format_prompts = instruction_length, strip_format_prompts
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def pixels(self, sample: dict) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
        """The sample's images, transformed: their views [V, 3, S, S] in the order of image_keys
        (None: no image), and each image's (height, width)."""
        views = [self.image_transform.views(sample[k]) for k in image_keys(sample)]
        return (torch.cat([v for v, _ in views]) if views else None), [size for _, size in views]

    def planned_image_tokens(self, sample: dict) -> int:
        """The visual tokens of a raw sample's images without decoding them (sizes from the
        image headers), for length planning; 0 for images that cannot be read (they are skipped)."""
        try:
            keys = image_keys(sample)
            if not callable(self.image_tokens):  # one count for every image: no header to read
                return self.image_tokens * len(keys)
            return self.tokens_of_sizes([self.image_transform.size_of(sample[k]) for k in keys])
        except ImageError:
            return 0

    def tokens_of_sizes(self, sizes: list[tuple[int, int]]) -> int:
        """The visual tokens of images of these (height, width) as decoded (what the plan counts)."""
        return sum(self.tokens_for(*size) for size in sizes)

    def instructions(self, turns: list[dict]) -> list[list[int]] | None:
        """One question per `<image>` tag: the text of the turn that holds it (tags removed)."""
        if self.instruction_length is None:
            return None
        out = []
        for turn in turns:
            text = turn["value"].replace(IMAGE_TOKEN, "").strip()
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.instruction_length]
            out += [ids or [self.tokenizer.pad_token_id]] * turn["value"].count(
                IMAGE_TOKEN
            )  # an image with no question gets one token
        return out

    def _encode_fitting(
        self, turns: list[dict], image_tokens: list[int], generation_prompt: bool, label_end_of_turn: bool = True
    ):
        dropped = 0
        while True:
            try:
                return encode(
                    self.tokenizer,
                    self.template,
                    turns,
                    image_tokens,
                    self.image_token_id,
                    max_length=self.max_length,
                    generation_prompt=generation_prompt,
                    label_end_of_turn=label_end_of_turn,
                ), dropped
            except ConversationTooLong:
                # Drop the last exchange, but never the first, nor one that holds an image (images are never cut).
                if len(turns) <= (1 if generation_prompt else 2) or any(IMAGE_TOKEN in t["value"] for t in turns[-2:]):
                    raise
                turns, dropped = turns[:-2], dropped + 2

    def encode(
        self,
        sample: dict,
        turns: list[dict],
        generation_prompt: bool = False,
        meta: dict | None = None,
        label_end_of_turn: bool = True,
    ) -> Example | Skip:
        """`label_end_of_turn=False`: label the replies without their end-of-turn (answer log-likelihoods)."""
        key = sample.get("__key__", "?")
        try:
            if self.strip_format_prompts:
                turns = strip_format_prompts(turns)
            pixels, sizes = self.pixels(sample)
            enc, dropped = self._encode_fitting(
                turns, [self.tokens_for(*size) for size in sizes], generation_prompt, label_end_of_turn
            )
        except ConversationError as e:
            return Skip(key, f"conversation: {e}")
        except ImageError as e:
            return Skip(key, f"image: {e}")
        except Exception as e:  # anything else a hostile sample can trigger
            return Skip(key, f"sample: {type(e).__name__}: {e}")
        images = len(sizes)
        if enc.num_images != images:
            return Skip(key, f"conversation: {enc.num_images} <image> tokens in the text but {images} images")
        meta = {**(meta or {}), **({"truncated_turns": dropped} if dropped else {})}
        instructions = self.instructions(turns[: len(turns) - dropped]) if images else None
        return Example(enc.input_ids, enc.labels, pixels, meta, instructions, sizes if images else None)

    def __call__(self, sample: dict) -> Example | Skip:
        """A training sample: the whole conversation."""
        key = sample.get("__key__", "?")
        if ERROR_KEY in sample:
            return Skip(key, sample[ERROR_KEY])
        try:
            record = parse_record(sample.get("json"))
        except ValueError as e:
            return Skip(key, str(e))
        return self.encode(
            sample, record["conversations"], meta={"id": record.get("id"), "source": record.get("source"), "key": key}
        )
