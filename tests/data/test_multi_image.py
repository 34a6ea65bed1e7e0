"""Several images per conversation: numbered entries bound in order to the <image> tags, wherever
they stand; exact placeholders, masks and image order through collate, packing, the converter and
the model."""

import io
import json

import pytest
import torch
from PIL import Image

from lmm.data.collate import Collator
from lmm.data.conversation import IGNORE_INDEX, IMAGE_TOKEN
from lmm.data.image import ImageError, ImageTransform
from lmm.data.sample import Example, SampleProcessor, Skip, count_images, image_entries, image_keys

TOKENS = 4  # placeholder ids per image


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


RED, GREEN, BLUE = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))


def processor(tokenizer, max_length=256, instruction_length=None):
    # mean 0, std 1: a pixel's value is its colour in [0, 1], so each image is recognisable in the batch
    return SampleProcessor(
        tokenizer,
        "vicuna_v1",
        ImageTransform(16, (0.0,) * 3, (1.0,) * 3),
        image_tokens=TOKENS,
        max_length=max_length,
        instruction_length=instruction_length,
    )


def sample(turns, **images):
    return {"__key__": "s", "json": {"id": "s", "conversations": turns}, **images}


def runs(ids: list[int], image_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of placeholder ids."""
    out, start = [], None
    for i, t in enumerate([*ids, None]):
        if t == image_id and start is None:
            start = i
        elif t != image_id and start is not None:
            out.append((start, i - start))
            start = None
    return out


def colour_of(pixels: torch.Tensor) -> tuple:
    return tuple(round(float(c)) for c in pixels.mean(dim=(1, 2)))


def test_image_keys_read_one_image_or_a_numbered_list():
    assert image_keys({"png": b""}) == ["png"]
    assert image_keys({"1.jpg": b"", "0.png": b"", "2.webp": b"", "json": b""}) == ["0.png", "1.jpg", "2.webp"]
    assert image_keys({"json": b""}) == [] and count_images({"txt": b""}) == 0
    assert image_entries([RED]) == {"jpg": RED} and list(image_entries([RED, GREEN])) == ["0.jpg", "1.jpg"]
    with pytest.raises(ImageError, match="skip a number"):
        image_keys({"0.png": b"", "2.png": b""})
    with pytest.raises(ImageError, match="not one image nor a numbered list"):
        image_keys({"png": b"", "0.png": b""})


def test_interleaved_tags_stay_in_place_and_bind_images_in_order(tokenizer):
    turns = [
        {"from": "human", "value": f"Image 1: {IMAGE_TOKEN}\nImage 2: {IMAGE_TOKEN}\nWhich is red?"},
        {"from": "gpt", "value": "first"},
    ]
    example = processor(tokenizer)(sample(turns, **{"0.png": RED, "1.png": GREEN}))
    assert isinstance(example, Example) and example.pixels.shape == (2, 3, 16, 16)
    assert [colour_of(p) for p in example.pixels] == [(1, 0, 0), (0, 1, 0)]  # 0.png first, as its tag
    image_id = processor(tokenizer).image_token_id
    placed = runs(example.input_ids, image_id)
    assert [n for _, n in placed] == [TOKENS, TOKENS]
    between = tokenizer.decode(example.input_ids[placed[0][0] + TOKENS : placed[1][0]])
    assert between.strip() == "Image 2:"  # the text between the tags is where it was, not moved
    before = tokenizer.decode(example.input_ids[: placed[0][0]])
    assert before.rstrip().endswith("USER: Image 1:")
    assert all(example.labels[i] == IGNORE_INDEX for s, n in placed for i in range(s, s + n))


def test_images_in_several_turns_and_a_single_tag_moved_first(tokenizer):
    turns = [
        {"from": "human", "value": f"What colour? {IMAGE_TOKEN}"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": f"And this one? {IMAGE_TOKEN}"},
        {"from": "gpt", "value": "blue"},
    ]
    example = processor(tokenizer)(sample(turns, **{"0.png": RED, "1.png": BLUE}))
    assert [colour_of(p) for p in example.pixels] == [(1, 0, 0), (0, 0, 1)]
    image_id = processor(tokenizer).image_token_id
    placed = runs(example.input_ids, image_id)
    assert len(placed) == 2
    # LLaVA-1.5's rule per turn: a turn's one tag goes to its front, then a newline.
    assert tokenizer.decode(example.input_ids[placed[0][0] + TOKENS : placed[1][0]]).strip().startswith("What colour?")


def test_count_mismatches_and_broken_lists_are_counted_skips(tokenizer):
    process = processor(tokenizer)
    one_tag = [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat?"}, {"from": "gpt", "value": "x"}]
    two_tags = [{"from": "human", "value": f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nWhat?"}, {"from": "gpt", "value": "x"}]
    more_images = process(sample(one_tag, **{"0.png": RED, "1.png": GREEN}))
    more_tags = process(sample(two_tags, png=RED))
    gap = process(sample(two_tags, **{"0.png": RED, "2.png": GREEN}))
    both = process(sample(two_tags, png=RED, **{"0.png": GREEN}))
    corrupt_second = process(sample(two_tags, **{"0.png": RED, "1.png": b"\x89PNG broken"}))
    assert isinstance(more_images, Skip) and "1 <image> tokens in the text but 2 images" in more_images.reason
    assert isinstance(more_tags, Skip) and "2 <image> tokens in the text but 1 images" in more_tags.reason
    assert all(isinstance(x, Skip) and x.kind == "image" for x in (gap, both, corrupt_second))
    batch = Collator(tokenizer.pad_token_id)([more_images, more_tags, gap, both, corrupt_second])
    assert batch.skipped == {"conversation": 2, "image": 3} and batch.rows == 0


def test_truncation_never_drops_an_exchange_that_holds_an_image(tokenizer):
    long = " ".join(["word"] * 40)
    turns = [
        {"from": "human", "value": f"{IMAGE_TOKEN}\nFirst?"},
        {"from": "gpt", "value": "yes"},
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{long}"},
        {"from": "gpt", "value": long},
    ]
    full = processor(tokenizer)(sample(turns, **{"0.png": RED, "1.png": GREEN}))
    short = processor(tokenizer, max_length=len(full.input_ids) - 5)(sample(turns, **{"0.png": RED, "1.png": GREEN}))
    assert isinstance(full, Example) and isinstance(short, Skip) and "max_length" in short.reason
    text_only_tail = [*turns[:2], {"from": "human", "value": long}, {"from": "gpt", "value": long}]
    whole = processor(tokenizer)(sample(text_only_tail, png=RED))
    cut = processor(tokenizer, max_length=len(whole.input_ids) - 5)(sample(text_only_tail, png=RED))
    assert isinstance(cut, Example) and cut.meta["truncated_turns"] == 2 and cut.num_images == 1


def test_collate_orders_images_as_their_placeholders_with_0_1_2_images(tokenizer):
    process = processor(tokenizer, instruction_length=8)
    q = [{"from": "gpt", "value": "ok"}]
    two = process(
        sample(
            [{"from": "human", "value": f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nCompare."}, *q], **{"0.png": GREEN, "1.png": BLUE}
        )
    )
    none = process(sample([{"from": "human", "value": "No image here."}, *q]))
    one = process(sample([{"from": "human", "value": f"{IMAGE_TOKEN}\nOne."}, *q], png=RED))
    assert [x.num_images for x in (two, none, one)] == [2, 0, 1]
    for packed in (False, True):
        batch = Collator(tokenizer.pad_token_id, packed=packed)([two, none, one])
        assert batch.images == 3
        assert [colour_of(p) for p in batch.pixel_values] == [(0, 1, 0), (0, 0, 1), (1, 0, 0)]
        assert int((batch.input_ids == process.image_token_id).sum()) == 3 * TOKENS
        assert batch.instruction_ids.shape[0] == 3  # one question per image
    assert tokenizer.decode(batch.instruction_ids[0][batch.instruction_mask[0].bool()]) == tokenizer.decode(
        batch.instruction_ids[1][batch.instruction_mask[1].bool()]
    )  # both images of one turn: its question


def test_model_writes_each_image_into_its_own_placeholders(tokenizer, data_root):
    """Visual tokens of image k land in the k-th run of placeholders, across samples with 2, 0 and 1 images."""
    from lmm.build.factory import build_run
    from tests.conftest import compose_config

    torch.manual_seed(0)
    model, real = build_run(compose_config(["vision=tiny", "llm=tiny", "connector=mlp"], data_root))
    process = SampleProcessor(real.tokenizer, real.template, real.image_transform, real.image_tokens, 512)
    q = [{"from": "gpt", "value": "ok"}]
    items = [
        process(
            sample(
                [{"from": "human", "value": f"A {IMAGE_TOKEN} and B {IMAGE_TOKEN}?"}, *q],
                **{"0.png": GREEN, "1.png": BLUE},
            )
        ),
        process(sample([{"from": "human", "value": "Text only."}, *q])),
        process(sample([{"from": "human", "value": f"{IMAGE_TOKEN}\nOne."}, *q], png=RED)),
    ]
    batch = Collator(real.tokenizer.pad_token_id)(items)
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.pixel_values)
        visual = model.encode_images(batch.pixel_values)  # [3, N, D]
    placed = [
        (row, s) for row in range(batch.rows) for s, _ in runs(batch.input_ids[row].tolist(), process.image_token_id)
    ]
    assert [row for row, _ in placed] == [0, 0, 2]
    for k, (row, s) in enumerate(placed):
        assert torch.equal(embeds[row, s : s + model.num_image_tokens], visual[k])
    out = model(**batch.model_inputs())
    assert torch.isfinite(out.loss)


def test_converter_takes_image_lists(tmp_path):
    """LLaVA-NeXT / M4-Instruct entries: `"image": [..]` with one tag per image, in order."""
    from lmm.data.convert import convert
    from lmm.data.shards import evaluation_stream, list_shards

    images = tmp_path / "images"
    for name, data in (("m4/a.png", RED), ("m4/b.png", GREEN), ("coco/b.png", GREEN)):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(data)
    entries = [
        {
            "id": "m4-0",
            "image": ["m4/a.png", "m4/b.png"],
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\nWhich is red?"},
                {"from": "gpt", "value": "The first."},
            ],
        },
        {
            "id": "m4-1",
            "image": ["coco/b.png"],
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\nColour?"},
                {"from": "gpt", "value": "Green."},
            ],
        },
        {
            "id": "m4-2",
            "image": ["m4/a.png", "m4/b.png"],
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\nOnly one tag."},
                {"from": "gpt", "value": "?"},
            ],
        },
        {
            "id": "m4-3",
            "image": ["m4/a.png", 7],
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}{IMAGE_TOKEN}"}, {"from": "gpt", "value": "?"}],
        },
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    source = tmp_path / "m4.json"
    source.write_text(json.dumps(entries))
    out = tmp_path / "shards"
    manifest = convert(source, images, out, workers=1, shard_size=10, progress=False)
    assert manifest["counts"] == {"llava_instruct": 1, "multi_image": 1, "sharegpt": 1}
    samples = {
        json.loads(s["json"])["id"]: s
        for folder in sorted(p for p in out.iterdir() if p.is_dir())
        for s in evaluation_stream(list_shards(folder), split_by_node=False)
    }
    assert sorted(samples) == ["m4-0", "m4-1", "text"]
    assert (
        image_keys(samples["m4-0"]) == ["0.png", "1.png"]
        and samples["m4-0"]["0.png"] == RED
        and samples["m4-0"]["1.png"] == GREEN
    )
    assert image_keys(samples["m4-1"]) == ["png"] and image_keys(samples["text"]) == []
    reasons = (out / "rejected.jsonl").read_text()
    assert "2 image(s) but 1 <image> tags" in reasons and "a list of paths" in reasons
