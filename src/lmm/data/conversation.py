"""Chat templates: render LLaVA-format turns to text and to token ids with an exact label mask.

A conversation is a list of LLaVA turns `{"from": "human"|"gpt", "value": str}`.
Rendering produces *segments* (text, is_target); tokenizing each segment on its own and
concatenating the ids means the label mask is exact by construction: there is no
re-tokenization of the whole prompt and so no "tokenization mismatch" that silently
drops a sample (LLaVA's failure mode).

[Contract] `render(t, turns) == "".join(text for text, _ in segments(t, turns))`.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"


class ConversationError(ValueError):
    """A conversation that cannot be rendered (bad roles, wrong length, too long)."""


@dataclass(frozen=True)
class Template:
    """A two-role chat format in the style of LLaVA's `Conversation` (SeparatorStyle.TWO)."""

    name: str
    system: str
    user: str
    assistant: str
    sep: str  # after the system prompt and after each user turn
    end_of_turn: str  # after each assistant reply; trained, so the model learns to stop


VICUNA_V1 = Template(
    name="vicuna_v1",
    system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    user="USER",
    assistant="ASSISTANT",
    sep=" ",
    end_of_turn="</s>",
)

TEMPLATES: dict[str, Template] = {VICUNA_V1.name: VICUNA_V1}
PLAIN = "plain"  # LLaVA's pretraining format: <image> caption "\n", no roles, no system prompt
TEMPLATE_NAMES = (PLAIN, *TEMPLATES)


def _check_turns(turns: list[dict]) -> None:
    if not turns:
        raise ConversationError("empty conversation")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise ConversationError(
                f"turn {i} must be {{'from': '{expected}', 'value': str}}, got {turn!r}"
            )


def _image_first(value: str) -> str:
    """LLaVA-1.5 moves `<image>` to the front of its turn, followed by a newline."""
    if IMAGE_TOKEN not in value:
        return value
    return (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()


def segments(template: str, turns: list[dict], generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """Split a conversation into (text, is_target) pieces.

    With `generation_prompt=True` the turns must end with a human turn and the result ends
    where the assistant's reply would start (the prompt used for generation).
    """
    _check_turns(turns)
    ends_with_human = len(turns) % 2 == 1
    if ends_with_human != generation_prompt:
        raise ConversationError(
            "a generation prompt must end with a human turn; a training sample with a gpt turn"
        )
    if template == PLAIN:
        return _plain_segments(turns, generation_prompt)
    if template not in TEMPLATES:
        raise ConversationError(f"unknown template {template!r}; choose one of {TEMPLATE_NAMES}")
    t = TEMPLATES[template]
    pieces: list[tuple[str, bool]] = []
    prefix = t.system + t.sep
    for i in range(0, len(turns), 2):
        human = _image_first(turns[i]["value"])
        prefix += f"{t.user}: {human}{t.sep}{t.assistant}:"
        if i + 1 < len(turns):
            pieces.append((prefix, False))
            pieces.append((" " + turns[i + 1]["value"] + t.end_of_turn, True))
            prefix = ""
    if prefix:
        pieces.append((prefix, False))
    return pieces


def _plain_segments(turns: list[dict], generation_prompt: bool) -> list[tuple[str, bool]]:
    # LLaVA's preprocess_plain: the human turn is replaced by the bare image token.
    if len(turns) > 2:
        raise ConversationError(f"the plain template takes one image-caption pair, got {len(turns)} turns")
    if IMAGE_TOKEN not in turns[0]["value"]:
        raise ConversationError("the plain template needs an <image> in the human turn")
    if generation_prompt:
        return [(IMAGE_TOKEN, False)]
    return [(IMAGE_TOKEN, False), (turns[1]["value"] + "\n", True)]


def render(template: str, turns: list[dict], generation_prompt: bool = False) -> str:
    """The full prompt text, exactly as LLaVA-1.5's `Conversation.get_prompt()` writes it."""
    return "".join(text for text, _ in segments(template, turns, generation_prompt))


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int


def encode(
    tokenizer,
    template: str,
    turns: list[dict],
    image_tokens: int,
    image_token_id: int,
    max_length: int | None = None,
    generation_prompt: bool = False,
) -> Encoded:
    """Tokenize a conversation; each `<image>` becomes `image_tokens` placeholder ids.

    Labels are IGNORE_INDEX everywhere except assistant replies and their end-of-turn token.
    Raises ConversationError when the result exceeds `max_length` (the caller counts a skip):
    truncating would cut image placeholders or leave a reply without its end-of-turn.
    """
    ids: list[int] = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    num_images = 0
    for text, is_target in segments(template, turns, generation_prompt):
        for j, part in enumerate(text.split(IMAGE_TOKEN)):
            if j > 0:  # an <image> stood between part j-1 and part j
                num_images += 1
                ids += [image_token_id] * image_tokens
                labels += [IGNORE_INDEX] * image_tokens
            if part:
                part_ids = tokenizer(part, add_special_tokens=False)["input_ids"]
                ids += part_ids
                labels += part_ids if is_target else [IGNORE_INDEX] * len(part_ids)
    if max_length is not None and len(ids) > max_length:
        raise ConversationError(f"conversation is {len(ids)} tokens, longer than max_length={max_length}")
    return Encoded(ids, labels, num_images)
