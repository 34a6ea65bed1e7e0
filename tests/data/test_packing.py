"""Packed rows give exactly the loss and gradients of the same samples run one by one."""

import pytest
import torch

from lmm.data.collate import Collator
from lmm.data.conversation import IGNORE_INDEX
from lmm.data.shards import evaluation_stream, list_shards
from lmm.model.build import build_model
from lmm.train.train import build_run
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def setup(data_root):
    cfg = compose_config(["data.max_length=512"], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    stream = evaluation_stream(list_shards(data_root / "synthetic" / "train"))
    examples = [processor(next(stream)) for _ in range(7)]
    return model.train(), processor, examples


def loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch["input_ids"], None if "position_ids" in batch else batch["attention_mask"], batch["pixel_values"],
                labels=batch["labels"], position_ids=batch.get("position_ids"))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_batch_equals_samples_one_by_one(setup):
    model, processor, examples = setup
    pad = processor.tokenizer.pad_token_id
    packed = Collator(pad, pack_length=512)(examples)
    assert packed["input_ids"].shape[0] < len(examples)  # several samples share rows
    assert packed["input_ids"].shape[0] * 512 >= sum(packed["sample_lengths"])
    loss, grads = loss_and_grads(model, packed)
    # Reference: each sample alone, weighted by its target tokens (the packed loss is the mean over all of them).
    total, weighted, reference_grads = 0, 0.0, {}
    for example in examples:
        single = Collator(pad)([example])
        targets = int((single["labels"][:, 1:] != IGNORE_INDEX).sum())
        single_loss, single_grads = loss_and_grads(model, single)
        weighted += float(single_loss) * targets
        total += targets
        for name, grad in single_grads.items():
            reference_grads[name] = reference_grads.get(name, 0) + grad * targets
    assert float(loss) == pytest.approx(weighted / total, abs=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name] / total, atol=1e-5), name


def test_packing_layout(setup):
    _, processor, examples = setup
    batch = Collator(processor.tokenizer.pad_token_id, pack_length=512)(examples)
    for row in range(batch["input_ids"].shape[0]):
        starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist()
        real = int(batch["attention_mask"][row].sum())
        for start in starts:
            if start < real:
                assert batch["labels"][row, start] == IGNORE_INDEX  # nothing predicts across a boundary
    image_token = processor.image_token_id
    images_in_order = (batch["input_ids"] == image_token).sum() // processor.image_tokens
    assert batch["pixel_values"].shape[0] == images_in_order
    with pytest.raises(ValueError, match="does not fit data.max_length=8"):
        Collator(processor.tokenizer.pad_token_id, pack_length=8)(examples)
