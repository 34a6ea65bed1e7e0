"""Variable-length attention for packed batches: each sample attends only to itself, at the
cost of its own length (Σ n², not (Σ n)²).

transformers reads a packed row (attention_mask=None, position ids restarting per sample) as a
block-diagonal causal mask, but SDPA and eager then compute every block of that mask, masked or
not: a row of 16 samples costs 16× the attention of the samples alone. Flash-attention kernels
take the sample boundaries (`cu_seq_lens_q/k`) instead; this is the same idea for any device:
one causal SDPA call per sample (on CUDA in 16-bit: torch's varlen flash kernel,
`torch.nn.attention.varlen.varlen_attn`, one launch for the whole row and no host sync),
registered with transformers as the attention implementation `lmm_varlen`. Everything that is not a packed
training forward (padded batches, generation with
a KV cache) goes to transformers' SDPA unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN = "lmm_varlen"
NATIVE_VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4")  # read cu_seq_lens themselves


def sample_bounds(query: torch.Tensor, key: torch.Tensor, attention_mask, kwargs: dict) -> list[int] | None:
    """Offsets of the samples in the flattened [B·T] tokens ([0, n₁, n₁+n₂, ..., B·T]), or None
    when this is not a packed forward (a padding mask, a KV cache, or one token)."""
    length = query.shape[2]
    if attention_mask is not None or key.shape[2] != length or length == 1:
        return None
    if kwargs.get("cu_seq_lens_q") is not None:
        return kwargs["cu_seq_lens_q"].tolist()
    positions = kwargs.get("position_ids")
    if positions is None:
        return None
    positions = positions.expand(query.shape[0], -1).reshape(-1)
    starts = (positions == 0).nonzero().flatten().tolist()
    return sorted({0, *starts, positions.numel()})


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query [B, H, T, d], key/value [B, Hkv, T, d] →
    ([B, T, H, d], None). Packed: on CUDA in 16-bit one varlen flash kernel over the whole row,
    without a host sync; elsewhere one causal SDPA per sample of the flattened batch."""
    if varlen_kernel_applies(query, key, attention_mask, kwargs):
        return varlen_kernel(query, key, value, kwargs, scaling), None
    bounds = sample_bounds(query, key, attention_mask, kwargs)
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    flat = lambda x: x.transpose(0, 1).reshape(1, x.shape[1], batch * length, dim)  # noqa: E731  [1, H, B·T, d]
    query, key, value = flat(query), flat(key), flat(value)
    gqa = key.shape[1] != heads
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    # split, not slices: the backward of split is one concatenation, that of each slice a full-size copy
    out = torch.cat(
        [
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in zip(
                query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2), strict=True
            )
        ],
        dim=2,
    )  # [1, H, B·T, d]
    return out.reshape(heads, batch, length, dim).permute(1, 2, 0, 3).contiguous(), None  # [B, T, H, d]


def varlen_kernel_applies(query: torch.Tensor, key: torch.Tensor, attention_mask, kwargs: dict) -> bool:
    """A packed training forward on CUDA in fp16/bf16, with the sample offsets already on the GPU."""
    offsets = kwargs.get("cu_seq_lens_q")
    return (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and attention_mask is None
        and query.shape[0] == 1
        and key.shape[2] == query.shape[2]
        and offsets is not None
        and offsets.is_cuda
        and kwargs.get("max_length_q") is not None
        and hasattr(torch.nn.attention, "varlen")
    )


def varlen_kernel(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kwargs: dict, scaling: float | None
) -> torch.Tensor:
    """torch's varlen flash attention over one packed row: [1, H, T, d] -> [1, T, H, d]."""
    from torch.nn.attention.varlen import varlen_attn

    rows = lambda x: x[0].transpose(0, 1)  # noqa: E731  [T, H, d]
    offsets = kwargs["cu_seq_lens_q"].to(torch.int32)
    out = varlen_attn(
        rows(query),
        rows(key),
        rows(value),
        offsets,
        offsets,
        int(kwargs["max_length_q"]),
        int(kwargs["max_length_q"]),
        scale=scaling,
        window_size=(-1, 0),
        enable_gqa=key.shape[1] != query.shape[1],
    )  # causal
    return out[None]  # [1, T, H, d]


def packed_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """No mask for a forward without padding or cache (packed_attention takes the sample
    boundaries instead); transformers' SDPA mask otherwise."""
    if attention_mask is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(VARLEN, packed_attention)
AttentionMaskInterface.register(VARLEN, packed_mask)


def use_packed_attention(llm: PreTrainedModel) -> str:
    """Make `llm` attend per sample in packed batches; flash-attention implementations already do.
    Returns the implementation in use."""
    if llm.config._attn_implementation not in NATIVE_VARLEN:
        window = (
            getattr(llm.config, "sliding_window", None) if getattr(llm.config, "use_sliding_window", True) else None
        )
        if window:  # per-sample SDPA attends to the whole sample
            raise ValueError(
                f"data.packing: this LLM attends within a sliding window of {window} tokens, which {VARLEN} "
                "does not implement; use llm.model.attn_implementation=flash_attention_2 or data.packing=false"
            )
        llm.set_attn_implementation(VARLEN)
    return llm.config._attn_implementation
