"""AnyRes: the grid choice, the tiles, the token counts and the token order equal LLaVA-NeXT's as
transformers implements it (LlavaNextImageProcessor, LlavaNextProcessor, LlavaNextModel);
placeholders, length planning and the model's forward agree on every image's count."""

import io
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextImageProcessor, LlavaNextModel, LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from lmm.build.factory import build_run
from lmm.data.anyres import AnyRes, best_resolution, default_pinpoints, unpadded_shape
from lmm.data.collate import Collator
from lmm.data.image import ImageTransform, image_size
from lmm.model.anyres import arrange
from lmm.model.vision import CLIP_MEAN, CLIP_STD

PINPOINTS = default_pinpoints(336)
SIZES = [
    (672, 672),
    (336, 1344),
    (1344, 336),
    (480, 640),
    (640, 480),
    (100, 2000),
    (2000, 100),
    (337, 335),
    (20, 20),
    (1080, 1920),
]


def layout(**changes) -> AnyRes:
    return AnyRes(336, tuple(map(tuple, PINPOINTS)), **changes)


def test_default_pinpoints_are_llava_next_scaled():
    assert PINPOINTS == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert default_pinpoints(64) == [[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]]


def test_grid_and_unpadding_equal_transformers_for_many_sizes():
    rng = np.random.default_rng(0)
    sizes = SIZES + [(int(h), int(w)) for h, w in rng.integers(8, 4000, size=(500, 2))]
    for height, width in sizes:
        assert best_resolution(height, width, PINPOINTS) == tuple(select_best_resolution((height, width), PINPOINTS))
        rows, cols = layout().grid(height, width)
        assert (rows, cols) == tuple(get_anyres_image_grid_shape((height, width), PINPOINTS, 336))
        full = torch.zeros(1, rows * 24, cols * 24)
        assert unpadded_shape(height, width, rows * 24, cols * 24) == tuple(
            unpad_image(full, (height, width)).shape[1:]
        )


def hf_number_of_features(height: int, width: int, num_additional_image_tokens: int = 0) -> int:
    """LlavaNextProcessor's own count (the placeholders it writes), called without a tokenizer."""
    fake = SimpleNamespace(
        image_processor=SimpleNamespace(image_grid_pinpoints=PINPOINTS),
        patch_size=14,
        num_additional_image_tokens=num_additional_image_tokens,
    )
    fake._get_unpadded_features = partial(LlavaNextProcessor._get_unpadded_features, fake)
    return LlavaNextProcessor._get_number_of_features(fake, height, width, 336, 336)


def test_tokens_per_image_follow_the_formula():
    # 672×672: the 2×2 grid, nothing cut: 576 (overview) + 48 rows × (48 + 1 newline) = 2928.
    assert layout().num_tokens(672, 672, 576, 24) == 576 + 48 * 49 == 2928
    # 1344×336 (wide): the 1×3 grid, 24×72 tokens of which 18 rows show the image: 576 + 18 × 73.
    assert layout().num_tokens(336, 1344, 576, 24) == 576 + 18 * 73 == 1890
    for height, width in SIZES:
        assert layout().num_tokens(height, width, 576, 24) == hf_number_of_features(height, width)
    # No overview, no newline: the unpadded map alone; pooled 2×2 per tile: 12×12 per tile.
    assert layout(overview=False, newline=False).num_tokens(672, 672, 576, 24) == 48 * 48
    assert layout(pool=2).num_tokens(672, 672, 576, 24) == 576 + 24 * 25
    # Tokens that are not a grid (a 32-query Q-Former): tiles in order, one newline per row of tiles.
    assert layout().num_tokens(672, 672, 32, None) == 32 + 4 * 32 + 2
    assert layout().num_tokens(336, 1344, 32, None) == 32 + 3 * 32 + 1


def test_tiles_and_overview_equal_the_llava_next_image_processor():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(300, 700, 3), dtype=np.uint8)  # 700 wide, 300 high
    image = Image.fromarray(pixels)
    hf = LlavaNextImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=PINPOINTS,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    theirs = hf(image, return_tensors="pt")
    transform = ImageTransform(336, CLIP_MEAN, CLIP_STD, "anyres", anyres=layout())
    views, size = transform.views(image)
    assert size == (300, 700) and theirs["image_sizes"].tolist() == [[300, 700]]
    # The 1×3 grid (1008×336 shows all 210,000 pixels; 672×336 only 193,536): overview + 3 tiles.
    assert views.shape == theirs["pixel_values"][0].shape == (4, 3, 336, 336)
    difference = (views - theirs["pixel_values"][0]).abs()
    # The same pixels up to the resampler's rounding (both bicubic with antialiasing, in uint8).
    assert difference.mean() < 0.01 and difference.max() < 0.2, (difference.mean(), difference.max())
    # Resized to 785×336 (⌈700 × 1.12⌉, 1.12 being 784.0000000000001 in floats, as HF computes it)
    # and centred: 111 black columns on the left, 112 on the right.
    black = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    assert torch.allclose(views[1, :, :, :111], black.expand(3, 336, 111), atol=1e-6)
    assert torch.allclose(views[3, :, :, -112:], black.expand(3, 336, 112), atol=1e-6)
    assert not torch.allclose(views[1, :, :, 111:112], black.expand(3, 336, 1), atol=1e-3)


def hf_pack(views_per_image, sizes, newline):
    fake = SimpleNamespace(
        config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=336, patch_size=14), image_grid_pinpoints=PINPOINTS
        )
    )
    features, lengths = LlavaNextModel.pack_image_features(
        fake, views_per_image, torch.tensor(sizes), "default", newline
    )
    return torch.cat(features), lengths.tolist()


def test_token_order_equals_pack_image_features():
    sizes = [(672, 672), (336, 1344), (480, 640), (1000, 200)]
    lay = layout()
    views = [torch.randn(lay.num_views(h, w), 576, 8) for h, w in sizes]
    newline = torch.randn(8)
    ours = arrange(torch.cat(views), sizes, lay, 24, newline)
    theirs, lengths = hf_pack(views, sizes, newline)
    assert torch.equal(ours, theirs)
    assert lengths == [lay.num_tokens(h, w, 576, 24) for h, w in sizes]


def test_pooling_non_grid_connectors_and_switches_give_the_counted_tokens():
    sizes = [(672, 672), (336, 1344), (500, 120)]
    for lay, tokens, side in [
        (layout(pool=2), 576, 24),
        (layout(pool=5), 576, 24),
        (layout(overview=False), 576, 24),
        (layout(newline=False), 576, 24),
        (layout(), 32, None),
        (layout(newline=False, overview=False), 32, None),
    ]:
        views = torch.randn(sum(lay.num_views(h, w) for h, w in sizes), tokens, 4)
        out = arrange(views, sizes, lay, side, None if not lay.newline else torch.zeros(4))
        assert out.shape == (sum(lay.num_tokens(h, w, tokens, side) for h, w in sizes), 4)
    # Pooling averages 2×2 cells of each tile: a tile of constant value stays that value.
    lay = layout(pool=2, overview=False, newline=False)
    views = torch.arange(4.0).view(4, 1, 1).expand(4, 576, 1)  # tile k holds k
    out = arrange(views, [(672, 672)], lay, 24, None).view(24, 24)
    assert out[0, 0] == 0 and out[0, 12] == 1 and out[12, 0] == 2 and out[23, 23] == 3


def jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), (200, 30, 30))
    exif = image.getexif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def sample(turns: list[str], **images) -> dict:
    conversation = []
    for question in turns:
        conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": "red"}]
    return {"__key__": "s", "json": json.dumps({"conversations": conversation}).encode(), **images}


def test_image_size_reads_the_header_with_its_rotation():
    assert image_size(jpeg(200, 50)) == (50, 200)
    assert image_size(jpeg(200, 50, orientation=6), exif="apply") == (
        200,
        50,
    )  # 90°: decoded upright as 50 wide, 200 high
    assert image_size(jpeg(200, 50, orientation=6)) == (50, 200)  # LLaVA's way (data.image.exif=ignore): as stored
    layout = AnyRes(64, tuple(map(tuple, default_pinpoints(64))))
    assert ImageTransform(64, CLIP_MEAN, CLIP_STD, "anyres", anyres=layout, exif="apply").views(
        jpeg(200, 50, orientation=6)
    )[1] == (200, 50)
    assert ImageTransform(64, CLIP_MEAN, CLIP_STD, "anyres", anyres=layout).views(jpeg(200, 50, orientation=6))[1] == (
        50,
        200,
    )


@pytest.fixture(scope="module")
def anyres_run(data_root):
    from tests.conftest import compose_config

    cfg = compose_config(
        ["vision=tiny", "vision.image_aspect=anyres", "data.max_length=1024", "data.image.exif=apply"], data_root
    )
    return build_run(cfg)


def test_placeholders_planning_and_forward_agree_per_image(anyres_run):
    model, processor = anyres_run
    samples = [
        sample(["<image>\nWhat colour?"], jpg=jpeg(64, 64)),
        sample(
            ["<image> and <image>\nWhich is wider?", "And now?"],
            **{"0.jpg": jpeg(200, 50), "1.jpg": jpeg(40, 130, orientation=6)},
        ),
        sample(["No image here."]),
        sample(["<image>\nTall one."], png=jpeg(30, 180)),
    ]
    examples = [processor(s) for s in samples]
    for s, x in zip(samples, examples, strict=True):
        placeholders = sum(t == model.image_token_id for t in x.input_ids)
        expected = sum(model.image_tokens(h, w) for h, w in (x.image_sizes or []))
        assert placeholders == expected == processor.planned_image_tokens(s)
        assert x.num_images == (0 if x.pixels is None else len(x.image_sizes))
    assert examples[1].image_sizes == [
        (50, 200),
        (40, 130),
    ]  # the second is stored 130 high, 40 wide, turned by its EXIF (data.image.exif=apply)
    assert examples[1].pixels.shape[0] == sum(model.anyres.num_views(h, w) for h, w in examples[1].image_sizes)
    batch = Collator(0)(examples)
    assert batch.images == 4 and batch.views == batch.pixel_values.shape[0] and batch.image_sizes.shape == (4, 2)
    out = model(**batch.model_inputs())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.connector.anyres_tokens.newline.grad.abs().sum() > 0  # every image's rows end with it
    # One view too few for the sizes: refused with the counts, never silently misplaced.
    with pytest.raises(ValueError, match="placeholder ids"):
        model(**batch.replace(image_sizes=batch.image_sizes.flip(1)).model_inputs())


def test_packed_batch_and_text_only_batch(anyres_run):
    model, processor = anyres_run
    examples = [
        processor(sample(["<image>\nWhat?"], jpg=jpeg(120, 40))),
        processor(sample(["<image>\nWhat?"], jpg=jpeg(64, 64))),
    ]
    padded, packed = Collator(0)(examples), Collator(0, packed=True)(examples)
    with torch.no_grad():
        rows = model.embed(padded.input_ids, padded.pixel_values, image_sizes=padded.image_sizes)
        row = model.embed(packed.input_ids, packed.pixel_values, image_sizes=packed.image_sizes)[0]
    lengths = padded.sample_lengths
    assert torch.equal(row, torch.cat([rows[0, : lengths[0]], rows[1, : lengths[1]]]))
    assert torch.isfinite(model(**packed.model_inputs()).loss)
    text = Collator(0)([processor(sample(["Just text."]))])
    model.zero_grad()
    model(**text.model_inputs(), always_encode=True).loss.backward()
    assert (
        model.connector.anyres_tokens.newline.grad is not None
    )  # the dummy image reaches the newline too (same collectives)


def test_describe_reports_visual_tokens_per_image_size():
    from lmm.analysis.describe import describe
    from tests.conftest import compose_config

    sizes = ["describe.image_sizes=[[672,672],[336,1344]]"]
    summary = describe(compose_config(["vision=clip_l14_336", "vision.image_aspect=anyres", "llm=vicuna7b", *sizes]))
    assert summary["visual_tokens_by_size"] == {
        "672x672": {"height": 672, "width": 672, "visual_tokens": 2928, "views": 5},
        "1344x336": {"height": 336, "width": 1344, "visual_tokens": 1890, "views": 4},
    }
    pad = describe(compose_config(["vision=clip_l14_336", "llm=vicuna7b", *sizes]))
    assert {k: v["visual_tokens"] for k, v in pad["visual_tokens_by_size"].items()} == {"672x672": 576, "1344x336": 576}
    with pytest.raises(ValueError, match="tile_pool=2 pools a grid"):
        describe(
            compose_config(
                [
                    "vision=clip_l14_336",
                    "vision.image_aspect=anyres",
                    "anyres.tile_pool=2",
                    "connector=qformer",
                    "llm=vicuna7b",
                ]
            )
        )
    with pytest.raises(ValueError, match="multiples of the tower's 336 px tile"):
        describe(
            compose_config(
                [
                    "vision=clip_l14_336",
                    "vision.image_aspect=anyres",
                    "anyres.grid_pinpoints=[[336,600]]",
                    "llm=vicuna7b",
                ]
            )
        )
    with pytest.raises(ValueError, match="max_tiles=1 leaves none"):
        describe(
            compose_config(["vision=clip_l14_336", "vision.image_aspect=anyres", "anyres.max_tiles=1", "llm=vicuna7b"])
        )


def connector_overrides(name: str) -> list[str]:
    from tests.model.test_connectors import TINY

    small = TINY.get(name, {}) | (
        {"vocab_size": 1024} if "vocab_size" in TINY.get(name, {}) else {}
    )  # the tokenizer's ids
    return [f"connector={name}", *(f"connector.{k}={v}" for k, v in small.items())]


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "connector").glob("*.yaml"))
)
def test_every_connector_works_per_tile(name, data_root):
    from tests.conftest import compose_config

    cfg = compose_config(
        ["vision=tiny", "vision.image_aspect=anyres", "data.max_length=2048", *connector_overrides(name)], data_root
    )
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    x = processor(
        sample(
            ["Image 1: <image>\nImage 2: <image>\nWhich is wider?"], **{"0.jpg": jpeg(200, 50), "1.jpg": jpeg(64, 64)}
        )
    )
    assert sum(t == model.image_token_id for t in x.input_ids) == sum(
        model.image_tokens(h, w) for h, w in x.image_sizes
    )
    assert model.image_tokens(50, 200) != model.image_tokens(
        64, 64
    )  # the sizes make different counts, for every connector
    loss = model(**Collator(0)([x]).model_inputs()).loss
    loss.backward()
    assert torch.isfinite(loss) and any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.connector.parameters()
    )
