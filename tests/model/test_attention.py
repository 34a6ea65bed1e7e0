"""lmm_varlen attention: per-sample causal attention equals the block-diagonal mask, and
everything that is not packed (padding masks, generation) is transformers' SDPA unchanged."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.model.attention import packed_attention, use_packed_attention


def block_diagonal_reference(query, key, value, lengths):
    """Dense SDPA with an explicit block-diagonal causal mask over the flattened batch."""
    batch, heads, length, dim = query.shape
    total = batch * length
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = (segment[:, None] == segment[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    flat = lambda x: x.transpose(0, 1).reshape(1, x.shape[1], total, dim)  # noqa: E731
    k, v = (flat(x).repeat_interleave(heads // key.shape[1], dim=1) for x in (key, value))
    out = torch.nn.functional.scaled_dot_product_attention(flat(query), k, v, attn_mask=mask)
    return out.reshape(heads, batch, length, dim).permute(1, 2, 0, 3)


@pytest.mark.parametrize("rows,lengths", [(1, [5, 9, 3, 1]), (2, [4, 6, 7, 3])])  # one packed row; two rows
def test_per_sample_attention_equals_the_block_diagonal_mask(rows, lengths):
    torch.manual_seed(0)
    length = sum(lengths) // rows
    query = torch.randn(rows, 4, length, 8)
    key, value = torch.randn(rows, 2, length, 8), torch.randn(rows, 2, length, 8)  # grouped-query heads
    positions = torch.cat([torch.arange(n) for n in lengths]).reshape(rows, length)
    module = torch.nn.Module()
    out, _ = packed_attention(module, query, key, value, None, position_ids=positions)
    assert out.shape == (rows, length, 4, 8)
    torch.testing.assert_close(out, block_diagonal_reference(query, key, value, lengths))
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    from_offsets, _ = packed_attention(module, query, key, value, None, cu_seq_lens_q=offsets)
    torch.testing.assert_close(from_offsets, out)


@pytest.fixture(scope="module")
def llama_pair():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        attn_implementation="sdpa",
    )
    reference = LlamaForCausalLM(config).eval()
    varlen = LlamaForCausalLM(config).eval()
    varlen.load_state_dict(reference.state_dict())
    assert use_packed_attention(varlen) == "lmm_varlen"
    return reference, varlen


def test_padded_batches_and_generation_are_unchanged(llama_pair):
    reference, varlen = llama_pair
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    torch.testing.assert_close(
        varlen(input_ids=ids, attention_mask=mask).logits, reference(input_ids=ids, attention_mask=mask).logits
    )
    generate = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert varlen.generate(ids, **generate).tolist() == reference.generate(ids, **generate).tolist()


def test_flash_attention_models_keep_their_own_varlen(llama_pair):
    reference, _ = llama_pair
    reference.config._attn_implementation_internal = "flash_attention_2"  # as if flash-attn were installed
    try:
        assert use_packed_attention(reference) == "flash_attention_2"
    finally:
        reference.config._attn_implementation_internal = "sdpa"


def test_sliding_window_models_are_refused_with_the_alternatives():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=50,
        sliding_window=16,
        attn_implementation="sdpa",
    )
    with pytest.raises(ValueError, match="sliding window of 16 tokens.*flash_attention_2 or data.packing=false"):
        use_packed_attention(MistralForCausalLM(config))
    config.sliding_window = None
    assert use_packed_attention(MistralForCausalLM(config)) == "lmm_varlen"
