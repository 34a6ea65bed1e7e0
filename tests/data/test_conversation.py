"""Templates render LLaVA-1.5's exact text; label masks are exact on hand-written conversations."""

import pytest

from lmm.data.conversation import IGNORE_INDEX, ConversationError, encode, render, segments

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TWO_TURNS = [
    {"from": "human", "value": "What color is the square?\n<image>"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "How many objects are in the image?"},
    {"from": "gpt", "value": "2"},
]


def test_vicuna_v1_text_is_llava_exact():
    assert render("vicuna_v1", TWO_TURNS) == (
        f"{SYSTEM} USER: <image>\nWhat color is the square? ASSISTANT: red</s>"
        "USER: How many objects are in the image? ASSISTANT: 2</s>"
    )


def test_generation_prompt_ends_at_assistant():
    prompt = render("vicuna_v1", TWO_TURNS[:1], generation_prompt=True)
    assert prompt == f"{SYSTEM} USER: <image>\nWhat color is the square? ASSISTANT:"


def test_plain_template():
    pair = [{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "A red circle."}]
    assert render("plain", pair) == "<image>A red circle.\n"
    assert segments("plain", pair) == [("<image>", False), ("A red circle.\n", True)]
    with pytest.raises(ConversationError, match="one image-caption pair"):
        render("plain", TWO_TURNS)


def test_segments_concatenate_to_render():
    assert "".join(t for t, _ in segments("vicuna_v1", TWO_TURNS)) == render("vicuna_v1", TWO_TURNS)
    targets = [t for t, is_target in segments("vicuna_v1", TWO_TURNS) if is_target]
    assert targets == [" red</s>", " 2</s>"]


@pytest.mark.parametrize("bad", [[], [{"from": "gpt", "value": "x"}], [{"from": "human", "value": 3}]])
def test_bad_turns_raise(bad):
    with pytest.raises(ConversationError):
        render("vicuna_v1", bad, generation_prompt=True)


def test_unknown_template():
    with pytest.raises(ConversationError, match="unknown template"):
        render("alpaca", TWO_TURNS)


def test_label_mask_is_exact(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    enc = encode(tokenizer, "vicuna_v1", TWO_TURNS, image_tokens=7, image_token_id=image_id)
    assert len(enc.input_ids) == len(enc.labels)
    assert enc.input_ids[0] == tokenizer.bos_token_id and enc.labels[0] == IGNORE_INDEX
    assert enc.input_ids.count(image_id) == 7 and enc.num_images == 1
    # The trained positions are exactly the two replies with their end-of-turn token.
    trained = [(i, t) for i, t in enumerate(enc.labels) if t != IGNORE_INDEX]
    assert all(enc.input_ids[i] == t for i, t in trained)
    spans, current = [], []
    for t in enc.labels:
        if t != IGNORE_INDEX:
            current.append(t)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == [" red</s>", " 2</s>"]
    assert [s[-1] for s in spans] == [tokenizer.eos_token_id] * 2
    # Decoding the whole sequence (placeholders collapsed) gives back the rendered text.
    text = tokenizer.decode([t for t in enc.input_ids[1:] if t != image_id])
    assert text == render("vicuna_v1", TWO_TURNS).replace("<image>", "")


def test_over_long_conversation_raises(tokenizer):
    with pytest.raises(ConversationError, match="longer than max_length"):
        encode(tokenizer, "vicuna_v1", TWO_TURNS, image_tokens=64, image_token_id=4, max_length=50)


def sentencepiece_like_tokenizer():
    """A Llama-style tokenizer (Metaspace '▁' prefix) built offline, to check the mask rule on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = [SYSTEM, "USER: ASSISTANT: What color is the square? red How many objects are in the image? 2"] * 5
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<image>"], show_progress=False
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def test_label_mask_with_sentencepiece_style_tokenizer():
    """A non-LLaVA template (mistral) is tokenized in one call and labelled by offsets."""
    tok = sentencepiece_like_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = encode(tok, "mistral", TWO_TURNS, image_tokens=3, image_token_id=image_id)
    whole = tok(render("mistral", TWO_TURNS), add_special_tokens=False)["input_ids"]
    expanded = [t for w in whole for t in ([w] * 3 if w == image_id else [w])]
    assert enc.input_ids == [tok.bos_token_id, *expanded]  # exactly the tokenizer's own ids
    trained = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(trained) == [*tok.tokenize(" red"), "</s>", *tok.tokenize(" 2"), "</s>"]


def test_llava_count_mismatch_is_a_skip_not_a_silent_mask():
    """This toy vocabulary has "▁USER" but not "USER": without the legacy "▁" after `</s>` the second
    round is longer in context than alone, and LLaVA's counts (even shifted) miss it. LLaVA trains
    on such a sample with every label masked; lmm raises, and the caller counts a skip."""
    tok = sentencepiece_like_tokenizer()
    with pytest.raises(ConversationError, match="tokenization mismatch"):
        encode(tok, "vicuna_v1", TWO_TURNS, image_tokens=3, image_token_id=tok.convert_tokens_to_ids("<image>"))


ONE = [
    {"from": "human", "value": "<image>\nHi?"},
    {"from": "gpt", "value": "Yes."},
    {"from": "human", "value": "And?"},
    {"from": "gpt", "value": "No."},
]
EXPECTED = {  # each model's own chat format, written out by hand from its chat template
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nHi?<|im_end|>\n"
    "<|im_start|>assistant\nYes.<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nHi?<|eot_id|><|start_header_id|>assistant"
    "<|end_header_id|>\n\nYes.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd?<|eot_id|><|start_header_id|>"
    "assistant<|end_header_id|>\n\nNo.<|eot_id|>",
    "llama2": "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand "
    "the visual content that the user provides, and assist the user with a variety of tasks using natural language."
    "\n<</SYS>>\n\n"
    "<image>\nHi? [/INST] Yes. </s><s>[INST] And? [/INST] No. </s>",
    "mistral": "[INST] <image>\nHi? [/INST] Yes.</s>[INST] And? [/INST] No.</s>",
    "phi2": "Instruct: <image>\nHi?\nOutput: Yes.<|endoftext|>\nInstruct: And?\nOutput: No.<|endoftext|>",
    "zephyr": "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\n<image>\nHi?</s>\n<|assistant|>\nYes.</s>\n"
    "<|user|>\nAnd?</s>\n<|assistant|>\nNo.</s>",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_chat_formats(name):
    assert render(name, ONE) == EXPECTED[name]
    targets = [t for t, is_target in segments(name, ONE) if is_target]
    end = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "phi2": "<|endoftext|>"}.get(name, "</s>")
    assert all(t.endswith(end) for t in targets) and len(targets) == 2
    prompt = render(name, ONE[:3], generation_prompt=True)
    assert EXPECTED[name].startswith(prompt) and not prompt.endswith(end)
