"""The LMM writes visual tokens exactly at the placeholder positions and generates batch-invariantly."""

import pytest
import torch

from lmm.build.model import build_model
from tests.conftest import compose_config

IMAGE_ID = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(compose_config([]), image_token_id=IMAGE_ID).eval()


def test_visual_tokens_replace_placeholders(model):
    n = model.num_image_tokens
    ids = torch.tensor([[1, 7, *[IMAGE_ID] * n, 9, 10], [1, *[IMAGE_ID] * n, 11, 12, 13]])
    pixels = torch.randn(2, 3, 64, 64)
    embeds = model.embed(ids, pixels)  # [2, T, D]
    visual = model.encode_images(pixels)  # [2, N, D]
    torch.testing.assert_close(embeds[0, 2 : 2 + n], visual[0])
    torch.testing.assert_close(embeds[1, 1 : 1 + n], visual[1])
    table = model.llm.get_input_embeddings().weight
    torch.testing.assert_close(embeds[0, 1], table[7])
    torch.testing.assert_close(embeds[1, -1], table[13])


def test_placeholder_count_mismatch_is_a_clear_error(model):
    ids = torch.tensor([[1, IMAGE_ID, IMAGE_ID, 5]])
    with pytest.raises(ValueError, match="image placeholder"):
        model.embed(ids, torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("loss", ["plain", "fused"])
def test_loss_ignores_masked_labels(model, loss):
    n = model.num_image_tokens
    ids = torch.tensor([[1, *[IMAGE_ID] * n, 20, 21, 22]])
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]
    pixels = torch.randn(1, 3, 64, 64)
    logits = model(ids, torch.ones_like(ids), pixels).logits[0, -3:-1]  # no labels: the full logits
    model.loss_path = loss
    try:
        out = model(ids, torch.ones_like(ids), pixels, labels=labels)
    finally:
        model.loss_path = "fused"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, ids[0, -2:]))


def test_batched_generation_matches_one_by_one(model):
    n = model.num_image_tokens
    prompts = [[1, *[IMAGE_ID] * n, 30, 31], [1, *[IMAGE_ID] * n, 40, 41, 42, 43, 44]]
    pixels = torch.randn(2, 3, 64, 64)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_ids=[2], pad_token_id=0)
    for row, prompt in enumerate(prompts):
        single = model.generate(
            torch.tensor([prompt]),
            torch.ones(1, len(prompt), dtype=torch.long),
            pixels[row : row + 1],
            max_new_tokens=6,
            eos_token_ids=[2],
            pad_token_id=0,
        )
        assert batched[row, : single.shape[1]].tolist() == single[0].tolist()
