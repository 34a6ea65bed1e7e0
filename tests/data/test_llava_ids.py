"""lmm's ids and labels for LLaVA's templates are LLaVA's own (tests/llava_reference.py, copied
from haotian-liu/LLaVA), with a real SentencePiece Llama tokenizer, `legacy` true and false."""

import pytest

from lmm.data.conversation import IGNORE_INDEX, ConversationError, encode
from lmm.data.tokenizer import load_tokenizer
from tests.llava_reference import IMAGE_TOKEN_INDEX, llava_generation_ids, llava_training_ids


def turns(*pairs):
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


CASES = {  # (template, turns, images moved first as LLaVA-1.5 does)
    "v1 one turn": ("vicuna_v1", turns(("<image>\nWhat color is the bus?", "red")), True),
    "v1 image after the question": ("vicuna_v1", turns(("What color is the bus?\n<image>", "red")), True),
    "v1 image mid-turn": ("vicuna_v1", turns(("What color <image> is the bus?", "red")), True),
    "v1 two turns": (
        "vicuna_v1",
        turns(("<image>\nWhat color is the bus?", "red"), ("How many people are there?", "two")),
        True,
    ),
    "v1 three turns": (
        "vicuna_v1",
        turns(
            ("Who wrote this book?\n<image>", "Jane Austen"),
            ("Is the sky cloudy?", "no"),
            ("What is the man doing?", "He irons clothes on a taxi."),
        ),
        True,
    ),
    "v1 text only": (
        "vicuna_v1",
        turns(("Why?", "It is a stunt."), ("What is unusual?", "A man irons clothes.")),
        False,
    ),
    "v1 two images": ("vicuna_v1", turns(("<image>\n<image>\nWhich is red?", "the first"), ("Why?", "colour")), False),
    "v1 images in two turns": (
        "vicuna_v1",
        turns(("<image>\nWhat is this?", "a bus"), ("And this? <image>", "a taxi")),
        True,
    ),
    "plain caption": ("plain", turns(("<image>\nProvide a one-sentence caption.", "two people are there.")), True),
    "plain question after image": ("plain", turns(("Describe.\n<image>", "A man irons clothes on a taxi.")), True),
    "llama2 one turn": ("llama2", turns(("<image>\nWhat color is the bus?", "red")), True),
    "llama2 two turns": (
        "llama2",
        turns(("<image>\nWhat color is the bus?", "red"), ("How many people are there?", "two")),
        True,
    ),
    "llama2 text only": ("llama2", turns(("Why?", "It is a stunt.")), False),
}


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def llama(request, llama_tokenizer_dirs):
    tokenizer = load_tokenizer(str(llama_tokenizer_dirs[request.param]))
    assert tokenizer.legacy is request.param  # the flag as the checkpoint's tokenizer_config.json has it
    return tokenizer


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_and_labels_are_llavas(llama, case):
    template, conversation, moved = CASES[case]
    has_image = any("<image>" in t["value"] for t in conversation)
    image_id = llama.convert_tokens_to_ids("<image>")
    ids, labels = llava_training_ids(
        template, conversation, llama, has_image=has_image or not moved, move_image_first=moved
    )
    ids = [image_id if t == IMAGE_TOKEN_INDEX else t for t in ids]
    if all(label == IGNORE_INDEX for label in labels):  # LLaVA's "tokenization mismatch": every label masked
        with pytest.raises(ConversationError, match="tokenization mismatch"):
            encode(llama, template, conversation, image_tokens=1, image_token_id=image_id)
        pytest.skip("LLaVA masks this sample entirely; lmm counts it as a skip")
    labels = [IGNORE_INDEX if t == IMAGE_TOKEN_INDEX else t for t in labels]
    enc = encode(llama, template, conversation, image_tokens=1, image_token_id=image_id)
    assert enc.input_ids == ids
    assert enc.labels == labels


def test_no_case_is_a_mismatch_with_these_tokenizers(llama):
    """The cases above exercise LLaVA's label counts, not just its mismatch branch."""
    image_id = llama.convert_tokens_to_ids("<image>")
    for template, conversation, _ in CASES.values():
        enc = encode(llama, template, conversation, image_tokens=1, image_token_id=image_id)
        assert any(label != IGNORE_INDEX for label in enc.labels)


def test_text_after_an_image_starts_with_the_prefix_space(llama):
    """tokenizer_image_token: each piece is tokenized on its own, so "\\n" after the image is "▁" "\\n"
    and a plain caption starts with "▁", whatever `legacy` says."""
    image_id = llama.convert_tokens_to_ids("<image>")
    enc = encode(llama, "vicuna_v1", CASES["v1 one turn"][1], image_tokens=3, image_token_id=image_id)
    after = enc.input_ids[enc.input_ids.index(image_id) + 3 :]
    assert llama.convert_ids_to_tokens(after[:2]) == ["▁", "<0x0A>"]
    enc = encode(llama, "plain", CASES["plain caption"][1], image_tokens=3, image_token_id=image_id)
    assert llama.convert_ids_to_tokens(enc.input_ids[4])[0] == "▁"


def test_legacy_decides_the_ids_after_end_of_turn(llama_tokenizer_dirs):
    """LLaVA's ids differ between the settings after `</s>` (legacy repeats the "▁"); lmm's follow."""
    conversation = CASES["v1 two turns"][1]
    encoded = {}
    for legacy, folder in llama_tokenizer_dirs.items():
        tokenizer = load_tokenizer(str(folder))
        encoded[legacy] = encode(
            tokenizer, "vicuna_v1", conversation, 1, tokenizer.convert_tokens_to_ids("<image>")
        ).input_ids
    assert encoded[True] != encoded[False] and len(encoded[True]) == len(encoded[False]) + 1


@pytest.mark.parametrize("template", ["vicuna_v1", "llama2"])
def test_generation_prompt_is_llavas(llama, template):
    image_id = llama.convert_tokens_to_ids("<image>")
    question = "What color is the bus?\nAnswer the question using a single word or phrase."
    enc = encode(
        llama, template, [{"from": "human", "value": "<image>\n" + question}], 1, image_id, generation_prompt=True
    )
    assert enc.input_ids == [
        image_id if t == IMAGE_TOKEN_INDEX else t for t in llava_generation_ids(template, question, llama)
    ]
