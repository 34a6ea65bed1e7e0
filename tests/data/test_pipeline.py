"""Shard samples become padded batches; corrupt samples are skipped and counted, never fatal."""

import io

import torch
from PIL import Image

from lmm.data.collate import Collator
from lmm.data.conversation import IGNORE_INDEX
from lmm.data.image import ImageTransform
from lmm.data.sample import Example, SampleProcessor, Skip


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample(key, image=None, turns=None):
    turns = turns or [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    record = {"id": key, "source": "vqa", "conversations": turns}
    return {"__key__": key, "json": record, **({"png": image} if image is not None else {})}


def processor(tokenizer, max_length=256):
    return SampleProcessor(
        tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=4, max_length=max_length
    )


def test_bad_samples_are_counted_skips(tokenizer):
    process = processor(tokenizer)
    good = process(sample("good", png()))
    corrupt = process(sample("corrupt", b"\x89PNG not really"))
    no_image = process(sample("no-image"))
    bad_json = process({"__key__": "bad-json", "json": ["not", "a", "dict"]})
    too_long = processor(tokenizer, max_length=10)(sample("long", png()))
    assert isinstance(good, Example) and good.pixels.shape == (1, 3, 16, 16)
    assert isinstance(corrupt, Skip) and corrupt.reason.startswith("image:")
    assert isinstance(no_image, Skip) and "1 <image> tokens in the text but 0 images" in no_image.reason
    assert isinstance(bad_json, Skip) and bad_json.reason.startswith("json:")
    assert isinstance(too_long, Skip) and "max_length" in too_long.reason
    batch = Collator(pad_token_id=tokenizer.pad_token_id)([good, corrupt, no_image, bad_json, too_long])
    assert batch.input_ids.shape[0] == 1
    assert batch.skipped == {"image": 1, "json": 1, "conversation": 2}


def test_text_only_sample_has_no_pixels(tokenizer):
    turns = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]
    example = processor(tokenizer)(sample("text", None, turns))
    assert isinstance(example, Example) and example.pixels is None
    batch = Collator(tokenizer.pad_token_id)([example])
    assert batch.pixel_values is None


def test_padding_sides():
    a = Example([1, 2, 3], [IGNORE_INDEX, 2, 3], torch.zeros(1, 3, 4, 4))
    b = Example([1, 5], [IGNORE_INDEX, 5], torch.ones(1, 3, 4, 4))
    right = Collator(pad_token_id=0)([a, b])
    assert right.input_ids.tolist() == [[1, 2, 3], [1, 5, 0]]
    assert right.labels.tolist() == [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert right.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    left = Collator(pad_token_id=0, padding_side="left")([a, b])
    assert left.input_ids.tolist() == [[1, 2, 3], [0, 1, 5]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert left.pixel_values.shape == (2, 3, 4, 4)
