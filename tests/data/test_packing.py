"""A packed (padding-free) batch gives exactly the loss and gradients of its samples run one by one."""

import pytest
import torch

from lmm.build.factory import build_run
from lmm.data.collate import Collator
from lmm.data.conversation import IGNORE_INDEX
from lmm.data.shards import evaluation_stream, list_shards
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def setup(data_root):
    cfg = compose_config(["data.max_length=512", "data.packing=true"], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    stream = evaluation_stream(list_shards(data_root / "synthetic" / "train"))
    examples = [processor(next(stream)) for _ in range(7)]
    return model.train(), processor, examples


def loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch.input_ids, pixel_values=batch.pixel_values, labels=batch.labels, **batch.attention_inputs())
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_by_one(model, pad, examples):
    """Each sample alone, weighted by its target tokens (the packed loss is the mean over all of them)."""
    total, weighted, grads = 0, 0.0, {}
    for example in examples:
        single = Collator(pad)([example])
        targets = int((single.labels[:, 1:] != IGNORE_INDEX).sum())
        loss, single_grads = loss_and_grads(model, single)
        weighted += float(loss) * targets
        total += targets
        for name, grad in single_grads.items():
            grads[name] = grads.get(name, 0) + grad * targets
    return weighted / total, {name: grad / total for name, grad in grads.items()}


@pytest.mark.parametrize("attention", ["lmm_varlen", "sdpa"])  # per-sample SDPA, and transformers' block-diagonal mask
def test_packed_batch_equals_samples_one_by_one(setup, attention):
    model, processor, examples = setup
    assert model.llm.config._attn_implementation == "lmm_varlen"  # data.packing switched it
    pad = processor.tokenizer.pad_token_id
    reference_loss, reference_grads = one_by_one(model, pad, examples)
    packed = Collator(pad, packed=True)(examples)
    model.llm.set_attn_implementation(attention)
    try:
        loss, grads = loss_and_grads(model, packed)
    finally:
        model.llm.set_attn_implementation("lmm_varlen")
    assert float(loss) == pytest.approx(reference_loss, abs=1e-5)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name], atol=1e-5), name
    # The test can fail: attending across samples (a plain all-ones mask) changes the loss.
    crossing = model(packed.input_ids, packed.attention_mask, packed.pixel_values, labels=packed.labels).loss
    assert abs(float(crossing.detach()) - reference_loss) > 1e-4


def test_packing_layout(setup):
    _, processor, examples = setup
    batch = Collator(processor.tokenizer.pad_token_id, packed=True)(examples)
    lengths = [len(x.input_ids) for x in examples]
    assert batch.input_ids.shape == (1, sum(lengths))  # one row, not one pad token
    assert batch.sample_lengths == lengths
    assert batch.cu_seq_lens_q.tolist() == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    assert batch.max_length_q == max(lengths)
    starts = (batch.position_ids[0] == 0).nonzero().flatten().tolist()
    assert starts == batch.cu_seq_lens_q[:-1].tolist()
    assert (batch.labels[0, starts] == IGNORE_INDEX).all()  # nothing predicts across a boundary
    for x, a in zip(examples, starts, strict=True):  # every sample intact, image placeholders included
        assert batch.input_ids[0, a : a + len(x.input_ids)].tolist() == x.input_ids
        assert batch.labels[0, a + 1 : a + len(x.input_ids)].tolist() == x.labels[1:]
    images_in_order = (batch.input_ids == processor.image_token_id).sum() // processor.image_tokens
    assert batch.pixel_values.shape[0] == images_in_order == sum(x.num_images for x in examples)


def test_packing_an_all_skipped_batch_is_empty(setup):
    from lmm.data.sample import Skip

    batch = Collator(0, packed=True)([Skip("k", "image: truncated")])
    assert batch.input_ids.shape[0] == 0 and batch.skipped == {"image": 1}


def test_a_mistyped_switch_is_refused_before_any_work(data_root):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose_config(["data.packing=ture"], data_root)
    with pytest.raises(InstantiationException, match="data.packing must be true or false, got 'ture'"):
        instantiate(cfg.data, seed=0)
