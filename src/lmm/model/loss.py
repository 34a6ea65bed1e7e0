"""The LLM's loss and token scores from its final hidden states, never holding [B, T, V] logits
(model.loss=fused): the output projection is applied to the labelled positions only, a chunk of
rows at a time, with its own backward.

[Contract] `causal_lm_loss` equals transformers' ForCausalLMLoss on the full logits (position t
predicts label t + 1; −100 ignored; the mean over labelled tokens, nan when there are none) and
its gradients equal autograd's through the full logits (tests/model/test_loss.py: 1e-5 in fp32).
The logits of a chunk are computed in the model's dtype and cross-entropy in fp32, as
transformers upcasts them. As in Liger-Kernel's fused linear cross-entropy, the gradients are
made in the forward, chunk by chunk, so nothing of size V is kept for the backward or computed
twice; what is kept is the hidden states' gradient [N, D] and the head's [V, D] (when it trains).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
CHUNK_LOGITS = 2**24  # logits per chunk (64 MB in fp32), whatever the vocabulary: rows = CHUNK_LOGITS // V
LOSSES = ("fused", "plain")  # model.loss


def chunk_rows(vocabulary: int) -> int:
    return max(1, CHUNK_LOGITS // vocabulary)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, T] -> the token each position predicts [B, T] (transformers' shift: the last predicts nothing)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def output_head(llm: nn.Module) -> nn.Linear:
    """The LLM's output projection, checked to be a plain linear map of the last hidden state
    (no logit scaling or soft-capping, no adapter on it): what the fused loss computes."""
    head = llm.get_output_embeddings()
    config = llm.config
    for setting in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, setting, None) not in (None, 1, 1.0):
            raise ValueError(
                f"model.loss=fused computes plain logits, but this LLM sets {setting}={getattr(config, setting)}: "
                "use model.loss=plain"
            )
    if type(head) is not nn.Linear:
        raise ValueError(
            f"model.loss=fused needs the LLM's output projection to be a plain nn.Linear, got {type(head).__name__} "
            "(an adapter on lm_head?): use model.loss=plain"
        )
    return head


class LinearCrossEntropy(torch.autograd.Function):
    """Σ over rows of cross-entropy(hidden @ weightᵀ + bias, target), in chunks of rows; a row
    whose target is IGNORE_INDEX adds nothing (and gets a zero gradient)."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        rows: int,
        masked: bool = True,
    ) -> torch.Tensor:
        # hidden [N, D], weight [V, D], bias [V] or None, targets [N] -> loss sum (fp32 scalar).
        # masked=False: the caller kept only labelled rows, so the masking pass over each chunk is spared.
        grad_h, grad_w, grad_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if grad_h else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if grad_w else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if grad_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            h, y = hidden[start : start + rows], targets[start : start + rows]  # [c, D], [c]
            valid = (y != IGNORE_INDEX).float()  # [c]
            y = y.clamp(min=0)
            logits = F.linear(h, weight, bias).float()  # [c, V]
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            total += ((lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)) * valid).sum()
            if not (grad_h or grad_w or grad_b):
                continue
            grad_logits = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place [c, V]
            grad_logits[torch.arange(len(y), device=y.device), y] -= 1.0
            if masked:
                grad_logits *= valid.unsqueeze(1)
            if grad_h:
                grad_hidden[start : start + rows] = grad_logits.to(weight.dtype) @ weight  # [c, D]
            if grad_w:
                grad_weight += grad_logits.T @ h.float()  # [V, D], accumulated in fp32
            if grad_b:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            None if grad_hidden is None else grad_hidden * grad_total,
            None if grad_weight is None else (grad_weight * grad_total).to(weight_dtype),
            None if grad_bias is None else (grad_bias * grad_total).to(bias_dtype),
            None,
            None,
            None,
        )


def labelled_rows(
    hidden: torch.Tensor, labels: torch.Tensor, all_positions: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the hidden states that predict a label [N, D], those labels [N], their count) from hidden
    [B, T, D] and labels [B, T]. `all_positions`: every position, unlabelled ones as IGNORE_INDEX
    (static shapes, for fake tensors, which cannot select by value)."""
    targets = shifted_targets(labels)
    keep = targets != IGNORE_INDEX  # [B, T]
    if all_positions:
        return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), keep.sum()
    return hidden[keep], targets[keep], keep.sum()


def causal_lm_loss(
    hidden: torch.Tensor, labels: torch.Tensor, head: nn.Linear, all_positions: bool = False
) -> torch.Tensor:
    """The mean cross-entropy of the labelled tokens, from hidden [B, T, D] (fused)."""
    rows, targets, count = labelled_rows(hidden, labels, all_positions)
    total = LinearCrossEntropy.apply(
        rows, head.weight, head.bias, targets, chunk_rows(head.out_features), all_positions
    )
    return total / count


@torch.no_grad()
def labelled_token_scores(
    hidden: torch.Tensor, labels: torch.Tensor, head: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each labelled position (row-major): log p(label) [N] and whether it is the argmax [N],
    from hidden [B, T, D], in chunks (multiple-choice scoring without [B, T, V] logits)."""
    rows, targets, _ = labelled_rows(hidden, labels)
    logprobs, greedy = [], []
    for start in range(0, rows.shape[0], chunk_rows(head.out_features)):
        y = targets[start : start + chunk_rows(head.out_features)]
        logits = head(rows[start : start + len(y)]).float()  # [c, V]
        logprobs.append(logits.gather(1, y.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1))
        greedy.append(logits.argmax(-1) == y)
    if not logprobs:
        return hidden.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=hidden.device)
    return torch.cat(logprobs), torch.cat(greedy)
