"""model.loss=fused equals transformers' loss on the full logits, value and gradients, on padded,
packed, accumulated and LoRA steps, with untied and tied heads; teacher-forced scores too."""

import copy

import pytest
import torch

from lmm.build.model import build_model
from lmm.build.stage import Stage
from lmm.data.collate import Collator
from lmm.data.sample import Example
from lmm.model.loss import IGNORE_INDEX, LinearCrossEntropy, causal_lm_loss, output_head
from tests.conftest import compose_config

IMAGE_ID = 4
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def test_the_chunked_function_is_cross_entropy_on_the_full_logits():
    """Rows in chunks of 7 (not a divisor of 40), ignored rows, a bias: loss and the three gradients."""
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    bias = torch.randn(300, requires_grad=True)
    targets = torch.randint(0, 300, (40,))
    targets[[3, 11, 12, 39]] = IGNORE_INDEX
    fused = LinearCrossEntropy.apply(hidden, weight, bias, targets, 7) / (targets != IGNORE_INDEX).sum()
    grads = torch.autograd.grad(fused * 3.0, (hidden, weight, bias))
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, ignore_index=IGNORE_INDEX)
    expected = torch.autograd.grad(plain * 3.0, (hidden, weight, bias))
    torch.testing.assert_close(fused, plain, **TOLERANCE)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE)
    assert grads[0][[3, 11, 12, 39]].abs().max() == 0  # an ignored row gets no gradient


def test_a_frozen_head_keeps_no_weight_gradient():
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    total = LinearCrossEntropy.apply(hidden, weight, None, torch.randint(0, 50, (5,)), 2)
    saved = total.grad_fn.saved_tensors  # (hidden's gradient, the weight's, the bias's), made in the forward
    assert saved[0].shape == hidden.shape and saved[1] is None and saved[2] is None
    (grad,) = torch.autograd.grad(total, hidden)
    torch.testing.assert_close(grad, saved[0])


def pair(*overrides: str):
    """The same tiny model twice: model.loss=plain and model.loss=fused."""
    torch.manual_seed(0)
    plain = build_model(compose_config(["model.loss=plain", *overrides]), image_token_id=IMAGE_ID)
    fused = copy.deepcopy(plain)
    fused.loss_path = "fused"
    return plain, fused


def examples(model, seed: int = 0) -> list[Example]:
    """Two image conversations and a text-only one, prompts unlabelled, replies labelled."""
    g = torch.Generator().manual_seed(seed)
    n = model.num_image_tokens
    out = []
    for length, image in ((9, True), (14, True), (6, False)):
        text = torch.randint(10, 1000, (length,), generator=g).tolist()
        ids = [1, *([IMAGE_ID] * n if image else []), *text]
        labels = [IGNORE_INDEX] * (len(ids) - length // 2) + ids[len(ids) - length // 2 :]
        out.append(Example(ids, labels, torch.randn(1, 3, 64, 64, generator=g) if image else None))
    return out


def step(model, batch, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch.model_inputs(), always_encode=True).loss
    (loss * scale).backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(plain_step, fused_step):
    (loss_p, grads_p), (loss_f, grads_f) = plain_step, fused_step
    torch.testing.assert_close(loss_f, loss_p, **TOLERANCE)
    assert grads_f.keys() == grads_p.keys() and grads_p
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], **TOLERANCE, msg=name)
    return grads_p


@pytest.mark.parametrize("packed", [False, True])
def test_padded_and_packed_steps_match_the_plain_loss(packed):
    plain, fused = pair(f"data.packing={str(packed).lower()}")
    batch = Collator(0, packed=packed)(examples(plain))
    grads = assert_same(step(plain, batch), step(fused, batch))
    assert any(name.startswith("connector") for name in grads) and any("lm_head" in name for name in grads)


def test_accumulated_micro_batches_match_the_plain_loss():
    plain, fused = pair()
    batches = [Collator(0)(examples(plain, seed)) for seed in (1, 2)]
    totals = []
    for model in (plain, fused):
        model.zero_grad()
        for batch in batches:  # Lightning's accumulation: each micro-batch's loss / accumulation
            (model(**batch.model_inputs(), always_encode=True).loss / 2).backward()
        totals.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    for name, grad in totals[0].items():
        torch.testing.assert_close(totals[1][name], grad, **TOLERANCE, msg=name)


def test_lora_adapters_and_a_frozen_llm_match_the_plain_loss():
    plain, fused = pair()
    lora = Stage(train={"connector": True, "llm": False}, optim={"lr": 1e-3}, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    for model in (plain, fused):
        torch.manual_seed(1)  # the same adapter initialisation
        lora.apply(model)
        for name, p in model.named_parameters():  # LoRA's B starts at zero: move it, so the A gradients are not zero
            if "lora_B" in name:
                p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    batch = Collator(0)(examples(plain))
    grads = assert_same(step(plain, batch), step(fused, batch))
    assert any("lora_A" in name for name in grads) and not any("lm_head" in name for name in grads)


def test_a_tied_head_gets_both_gradients():
    plain, fused = pair("llm=tiny", "llm.model.arch.tie_word_embeddings=true")
    assert fused.llm.get_output_embeddings().weight is fused.llm.get_input_embeddings().weight
    assert_same(step(plain, Collator(0)(examples(plain))), step(fused, Collator(0)(examples(plain))))


def test_no_labelled_token_is_nan_as_in_transformers():
    plain, fused = pair()
    batch = Collator(0)(examples(plain))
    batch = batch.replace(labels=torch.full_like(batch.labels, IGNORE_INDEX))
    assert plain(**batch.model_inputs()).loss.isnan() and fused(**batch.model_inputs()).loss.isnan()


def test_teacher_forced_scores_match_the_full_logits():
    from lmm.eval.likelihood import labelled_logprobs

    plain, fused = pair()
    batches = [Collator(0)(examples(plain, seed)) for seed in (3, 4)]
    got, want = labelled_logprobs(fused.eval(), batches), labelled_logprobs(plain.eval(), batches)
    assert [g for _, g in got] == [g for _, g in want] and len(got) == 6
    torch.testing.assert_close(torch.tensor([s for s, _ in got]), torch.tensor([s for s, _ in want]), **TOLERANCE)


def test_heads_the_fused_loss_cannot_compute_are_refused():
    plain, _ = pair()
    plain.llm.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0: use model.loss=plain"):
        output_head(plain.llm)
    with pytest.raises(ValueError, match="model.loss must be one of"):
        build_model(compose_config(["model.loss=chunked"]), image_token_id=IMAGE_ID)


def test_fake_tensors_project_every_position_with_the_same_loss():
    """task=simulate's static-shape mode gives the same value as selecting the labelled rows."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40)
    hidden, labels = torch.randn(2, 6, 8), torch.randint(0, 40, (2, 6))
    labels[0, :3] = IGNORE_INDEX
    torch.testing.assert_close(
        causal_lm_loss(hidden, labels, head, all_positions=True), causal_lm_loss(hidden, labels, head)
    )
