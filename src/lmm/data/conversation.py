"""Chat templates: render LLaVA-format turns to text and to token ids with LLaVA's exact labels.

A conversation is a list of LLaVA turns `{"from": "human"|"gpt", "value": str}`.
Rendering produces *segments* (text, is_target).

Two tokenization rules (docs/parity.md says which template follows which):
- LLaVA's templates (`plain`, `vicuna_v1`, `llama2`) follow haotian-liu/LLaVA exactly: the prompt
  is cut at each `<image>` and every piece is tokenized on its own (`tokenizer_image_token`, so
  the text after an image starts with SentencePiece's "▁" whatever the tokenizer's `legacy`
  flag), and the labels are LLaVA's (`preprocess_plain`, `preprocess_v1`, `preprocess_llama_2`:
  per-round token counts, including its one-token shift for non-legacy tokenizers). Where
  LLaVA's counts do not add up ("tokenization mismatch", which LLaVA trains on silently with
  every label masked) the sample is a counted skip.
- The other families' templates tokenize the rendered prompt in one call, as their chat
  templates do, and label a token iff it starts inside a reply segment (character offsets).

[Contract] `render(t, turns) == "".join(text for text, _ in segments(t, turns))`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"


class ConversationError(ValueError):
    """A conversation that cannot be rendered (bad roles, wrong length, too long)."""


class ConversationTooLong(ConversationError):
    """More tokens than max_length: trailing exchanges can be dropped to fit."""


@dataclass(frozen=True)
class Template:
    """A chat format as format strings (`{content}` / `{system}` mark where text goes).

    Rendered: `system_format` once, then per exchange `user_format` (the first may use
    `first_user_format`, which can embed the system prompt as Llama-2 does), the reply as
    `reply_format` + `end_of_turn` (both trained, so the model learns to stop), and
    `after_reply` (masked: it belongs to the next prompt).
    """

    name: str
    system: str
    system_format: str
    user_format: str
    reply_format: str
    end_of_turn: str
    after_reply: str = ""
    first_user_format: str | None = None
    # LLaVA's own styles: the text that ends a round's instruction in preprocess_v1 / _llama_2
    # (`sep` there), and whether LLaVA shifts its counts for non-legacy tokenizers (v1 only).
    llava_assistant_sep: str | None = None
    llava_legacy_shift: bool = False

    def user(self, content: str, first: bool) -> str:
        fmt = self.first_user_format if first and self.first_user_format else self.user_format
        return fmt.format(content=content, system=self.system)


LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VISION_ASSISTANT_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

VICUNA_V1 = Template(  # LLaVA-1.5's conv_vicuna_v1
    name="vicuna_v1",
    system=LLAVA_SYSTEM,
    system_format="{system} ",
    user_format="USER: {content} ASSISTANT:",
    reply_format=" {content}",
    end_of_turn="</s>",
    llava_assistant_sep=" ASSISTANT: ",  # conv.sep + conv.roles[1] + ": "
    llava_legacy_shift=True,
)
LLAMA2 = Template(  # Llama-2-chat, as LLaVA's conv_llava_llama_2
    name="llama2",
    system=VISION_ASSISTANT_SYSTEM,
    system_format="",
    first_user_format="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
    user_format="[INST] {content} [/INST]",
    reply_format=" {content} ",
    end_of_turn="</s>",
    after_reply="<s>",
    llava_assistant_sep="[/INST] ",
)
LLAMA3 = Template(  # Llama-3-Instruct's chat template (BOS is added by the tokenizer step)
    name="llama3",
    system=VISION_ASSISTANT_SYSTEM,
    system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    reply_format="{content}",
    end_of_turn="<|eot_id|>",
)
CHATML = Template(  # Qwen2 (ChatML)
    name="chatml",
    system="You are a helpful assistant.",
    system_format="<|im_start|>system\n{system}<|im_end|>\n",
    user_format="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    reply_format="{content}",
    end_of_turn="<|im_end|>",
    after_reply="\n",
)
MISTRAL = Template(  # Mistral-Instruct: no system prompt
    name="mistral",
    system="",
    system_format="",
    user_format="[INST] {content} [/INST]",
    reply_format=" {content}",
    end_of_turn="</s>",
)
PHI2 = Template(  # Phi-2's documented QA format
    name="phi2",
    system="",
    system_format="",
    user_format="Instruct: {content}\nOutput:",
    reply_format=" {content}",
    end_of_turn="<|endoftext|>",
    after_reply="\n",
)
ZEPHYR = Template(  # TinyLlama-1.1B-Chat (Zephyr format)
    name="zephyr",
    system="You are a helpful assistant.",
    system_format="<|system|>\n{system}</s>\n",
    user_format="<|user|>\n{content}</s>\n<|assistant|>\n",
    reply_format="{content}",
    end_of_turn="</s>",
    after_reply="\n",
)

TEMPLATES: dict[str, Template] = {t.name: t for t in (VICUNA_V1, LLAMA2, LLAMA3, CHATML, MISTRAL, PHI2, ZEPHYR)}
PLAIN = "plain"  # LLaVA's pretraining format: <image> caption "\n", no roles, no system prompt
TEMPLATE_NAMES = (PLAIN, *TEMPLATES)


def _check_turns(turns: list[dict]) -> None:
    if not turns:
        raise ConversationError("empty conversation")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise ConversationError(f"turn {i} must be {{'from': '{expected}', 'value': str}}, got {turn!r}"[:300])
        if not turn["value"].strip():
            raise ConversationError(f"turn {i} is empty")


def images_first(prompt: str, images: int) -> str:
    """A prompt for `images` images: unchanged if it places their tags (or there are none),
    else the tags first, then a newline (as LLaVA's evaluation asks its questions)."""
    return prompt if not images or IMAGE_TOKEN in prompt else IMAGE_TOKEN * images + "\n" + prompt


def _image_first(value: str) -> str:
    """LLaVA-1.5 moves `<image>` to the front of its turn, followed by a newline. A turn with
    several images keeps them where they are (interleaved, as LLaVA-NeXT's multi-image data)."""
    if value.count(IMAGE_TOKEN) != 1:
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
        raise ConversationError("a generation prompt must end with a human turn; a training sample with a gpt turn")
    if template == PLAIN:
        return _plain_segments(turns, generation_prompt)
    if template not in TEMPLATES:
        raise ConversationError(f"unknown template {template!r}; choose one of {TEMPLATE_NAMES}")
    t = TEMPLATES[template]
    pieces: list[tuple[str, bool]] = []
    prefix = t.system_format.format(system=t.system)
    for i in range(0, len(turns), 2):
        prefix += t.user(_image_first(turns[i]["value"]), first=i == 0)
        if i + 1 < len(turns):
            pieces.append((prefix, False))
            pieces.append((t.reply_format.format(content=turns[i + 1]["value"]) + t.end_of_turn, True))
            prefix = t.after_reply
    if prefix and (generation_prompt or prefix != t.after_reply):
        pieces.append((prefix, False))
    return pieces


def _plain_segments(turns: list[dict], generation_prompt: bool) -> list[tuple[str, bool]]:
    # LLaVA's preprocess_plain: the human turn is replaced by the bare image token.
    if len(turns) > 2:
        raise ConversationError(f"the plain template takes one image-caption pair, got {len(turns)} turns")
    if IMAGE_TOKEN not in turns[0]["value"]:
        raise ConversationError("the plain template needs an <image> in the human turn")
    images = IMAGE_TOKEN * turns[0]["value"].count(IMAGE_TOKEN)  # (several: one after another)
    if generation_prompt:
        return [(images, False)]
    return [(images, False), (turns[1]["value"] + "\n", True)]


def render(template: str, turns: list[dict], generation_prompt: bool = False) -> str:
    """The full prompt text, exactly as LLaVA-1.5's `Conversation.get_prompt()` writes it."""
    return "".join(text for text, _ in segments(template, turns, generation_prompt))


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int


def _tokens(tokenizer, text: str, base: int = 0) -> tuple[list[int], list[int]]:
    """`text`'s ids (no special tokens added) and the character where each token starts (+ base)."""
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return out["input_ids"], [base + begin for begin, _ in out["offset_mapping"]]


def _prompt_tokens(tokenizer, text: str, image_token_id: int, per_image: bool) -> tuple[list[int], list[int]]:
    """The prompt's ids without BOS (one `image_token_id` per `<image>`) and their start characters.
    `per_image`: each piece between `<image>` tags is tokenized on its own, as LLaVA's
    tokenizer_image_token does; otherwise the text is tokenized in one call."""
    if not per_image:
        return _tokens(tokenizer, text)
    ids, starts, base = [], [], 0
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            ids.append(image_token_id)
            starts.append(base - len(IMAGE_TOKEN))
        chunk_ids, chunk_starts = _tokens(tokenizer, chunk, base)
        ids += chunk_ids
        starts += chunk_starts
        base += len(chunk) + len(IMAGE_TOKEN)
    return ids, starts


def _bos(tokenizer) -> list[int]:
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def image_chunk_ids(tokenizer, text: str, image_token_id: int) -> list[int]:
    """LLaVA's `tokenizer_image_token(text)`: BOS, then the pieces between `<image>` tags, each
    tokenized on its own, with one `image_token_id` in place of each tag."""
    return _bos(tokenizer) + _prompt_tokens(tokenizer, text, image_token_id, per_image=True)[0]


_LEGACY_BY_BEHAVIOUR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> bool, probed once


def is_legacy(tokenizer) -> bool:
    """The tokenizer's `legacy` flag, which LLaVA reads (LlamaTokenizer has it). One without the
    flag is legacy iff text after a special token is tokenized as at the start of a text (the
    property the flag names: SentencePiece's "▁" prefix repeated after `</s>`), probed once per
    tokenizer (this runs for every training sample)."""
    flag = getattr(tokenizer, "legacy", None)
    if flag is not None:
        return bool(flag)
    if tokenizer not in _LEGACY_BY_BEHAVIOUR:
        eos = tokenizer.eos_token
        after = tokenizer(eos + "USER", add_special_tokens=False)["input_ids"][1:] if eos else None
        _LEGACY_BY_BEHAVIOUR[tokenizer] = not eos or after == tokenizer("USER", add_special_tokens=False)["input_ids"]
    return _LEGACY_BY_BEHAVIOUR[tokenizer]


def _llava_round_labels(tokenizer, template: Template, text: str, ids: list[int], image_token_id: int) -> list[int]:
    """LLaVA's labels for `ids` (= image_chunk_ids(text)): preprocess_v1 / preprocess_llama_2.

    The conversation is cut into rounds at the end-of-turn; in each, the instruction (up to
    and including the assistant separator, less the BOS and the separator's trailing space)
    is masked and the rest (the reply, and the end-of-turn in BOS's place) trained. For v1,
    LLaVA takes one token off every round after the first when the tokenizer is not legacy
    (no "▁" after `</s>`). ConversationError where the counts do not cover the ids exactly."""

    def length(piece: str) -> int:
        return len(image_chunk_ids(tokenizer, piece, image_token_id))

    labels = list(ids)
    labels[0] = IGNORE_INDEX
    current, sep = 1, template.llava_assistant_sep
    shift = template.llava_legacy_shift and not is_legacy(tokenizer)
    for i, round_text in enumerate(text.split(template.end_of_turn)):
        if round_text == "":
            break
        parts = round_text.split(sep)
        if len(parts) != 2:
            break
        round_len, instruction_len = length(round_text), length(parts[0] + sep) - 2
        if i != 0 and shift:
            round_len, instruction_len = round_len - 1, instruction_len - 1
        for j in range(current, min(current + instruction_len, len(labels))):
            labels[j] = IGNORE_INDEX
        current += round_len
    labels[current:] = [IGNORE_INDEX] * max(0, len(labels) - current)
    if current != len(ids):
        raise ConversationError(
            f"tokenization mismatch: LLaVA's round counts cover {current} of {len(ids)} tokens "
            "(LLaVA would train on this sample with every label masked)"
        )
    return labels


def _offset_labels(
    pieces: list[tuple[str, bool]],
    body: list[int],
    starts: list[int],
    image_token_id: int,
    template: str,
    label_end_of_turn: bool,
) -> list[int]:
    """A token is trained iff it starts inside a reply segment (reply + end-of-turn; without the
    end-of-turn when `label_end_of_turn` is false)."""
    # Every target piece ends with the end-of-turn ("\n" for plain); it can be left unlabelled.
    unlabelled_tail = (
        0 if label_end_of_turn else len(TEMPLATES[template].end_of_turn if template in TEMPLATES else "\n")
    )
    target_spans, start = [], 0
    for piece, is_target in pieces:
        if is_target:
            target_spans.append((start, start + len(piece) - unlabelled_tail))
        start += len(piece)
    return [
        t if t != image_token_id and any(a <= b < z for a, z in target_spans) else IGNORE_INDEX
        for t, b in zip(body, starts, strict=True)
    ]


def llava_tokenized(template: str) -> bool:
    """Whether a template follows LLaVA's tokenization (per-image pieces, LLaVA's label counts)."""
    return template == PLAIN or (template in TEMPLATES and TEMPLATES[template].llava_assistant_sep is not None)


def encode(
    tokenizer,
    template: str,
    turns: list[dict],
    image_tokens: int | list[int],
    image_token_id: int,
    max_length: int | None = None,
    generation_prompt: bool = False,
    label_end_of_turn: bool = True,
) -> Encoded:
    """Tokenize a conversation; each `<image>` becomes `image_tokens` placeholder ids (a list:
    the k-th tag gets the k-th count, as AnyRes images differ; tags beyond it get none, and the
    caller's count check skips the sample). BOS first when the tokenizer has one.

    LLaVA's templates get LLaVA's ids and labels (module docstring); the others are tokenized
    in one call and labelled by character offsets (a token is trained iff it starts inside a
    reply segment: reply + end-of-turn). Raises ConversationError beyond `max_length` (the
    caller counts a skip): truncation would cut image placeholders or leave a reply without
    its end-of-turn. `label_end_of_turn=False` labels the replies alone, by offsets (the
    log-likelihood of an answer, as multiple-choice scoring asks for it; LLaVA has no such path).
    """
    pieces = segments(template, turns, generation_prompt)
    text = "".join(piece for piece, _ in pieces)
    llava = llava_tokenized(template)
    body, starts = _prompt_tokens(tokenizer, text, image_token_id, per_image=llava)
    ids = _bos(tokenizer) + body
    if llava and not generation_prompt and label_end_of_turn:  # a training sample: LLaVA's own labels
        if template == PLAIN:  # preprocess_plain: everything after tokenizer_image_token(<image>) is trained
            masked = len(image_chunk_ids(tokenizer, pieces[0][0], image_token_id))
            labels = [IGNORE_INDEX] * masked + ids[masked:]
        else:
            labels = _llava_round_labels(tokenizer, TEMPLATES[template], text, ids, image_token_id)
    else:
        labels = [IGNORE_INDEX] * (len(ids) - len(body)) + _offset_labels(
            pieces, body, starts, image_token_id, template, label_end_of_turn
        )
    out_ids: list[int] = []
    out_labels: list[int] = []
    num_images = 0
    for token_id, label in zip(ids, labels, strict=True):
        if token_id == image_token_id:
            count = (
                image_tokens
                if isinstance(image_tokens, int)
                else (image_tokens[num_images] if num_images < len(image_tokens) else 0)
            )
            num_images += 1
            out_ids += [image_token_id] * count
            out_labels += [IGNORE_INDEX] * count
            continue
        out_ids.append(token_id)
        out_labels.append(label)
    if max_length is not None and len(out_ids) > max_length:
        raise ConversationTooLong(f"conversation is {len(out_ids)} tokens, longer than max_length={max_length}")
    return Encoded(out_ids, out_labels, num_images)
