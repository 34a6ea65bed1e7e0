"""Each connector runs forward/backward on tiny sizes, emits the token count it reports, and
its parameter count equals the formula in its docstring at real sizes."""

import pytest
import torch
from transformers import BertConfig, BertModel

from lmm.build.model import build_connector, build_model
from lmm.model.connectors import QFormerConnector
from tests.conftest import CONF, compose_config

CONNECTORS = sorted(p.stem for p in (CONF / "connector").glob("*.yaml"))
# Small sizes for the heavy families, so forward/backward is fast; everything else as configured.
TINY = {
    "qformer": {"num_queries": 5, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64},
    "qformer_instruct": {
        "num_queries": 5,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 64,
        "vocab_size": 50,
    },
    "resampler": {"num_queries": 16, "head_dim": 8},
    "perceiver": {"num_latents": 6, "num_layers": 2, "num_heads": 2, "head_dim": 8},
    "c_abstractor": {"num_tokens": 9, "hidden_size": 16, "depth": 1},
    "ldp": {"pooled_side": 3},
}


def tiny_connector(name: str, vision_dim: int = 24, llm_dim: int = 24):
    cfg = compose_config([f"connector={name}"])
    torch.manual_seed(0)
    cfg.connector.merge_with(TINY.get(name, {}))
    return build_connector(cfg.connector, vision_dim, llm_dim)[0]


@pytest.mark.parametrize("name", CONNECTORS)
def test_forward_backward_and_token_count(name):
    connector = tiny_connector(name)
    patches = torch.randn(3, 36, 24, requires_grad=True)  # a 6x6 grid
    extra = {}
    if connector.uses_instruction:
        extra = {
            "instruction_ids": torch.randint(1, 50, (3, 7)),
            "instruction_mask": torch.ones(3, 7, dtype=torch.long),
        }
    out = connector(patches, **extra)
    assert out.shape == (3, connector.num_tokens(36), 24)
    out.square().mean().backward()
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    assert sum(p.numel() for p in connector.parameters()) == connector.formula_parameters()


EXPECTED_TOKENS = {
    "identity": 576,
    "linear": 576,
    "mlp": 576,
    "qformer": 32,
    "qformer_instruct": 32,
    "resampler": 256,
    "perceiver": 64,
    "c_abstractor": 144,
    "ldp": 144,
    "pixel_shuffle": 144,
    "qformer_tiny": 32,
    "resampler_tiny": 16,
}


@pytest.mark.parametrize("llm", ["vicuna7b", "vicuna13b"])
@pytest.mark.parametrize("name", sorted(set(CONNECTORS) - {"identity"}))
def test_real_size_counts_match_the_formula(name, llm):
    cfg = compose_config([f"connector={name}", "vision=clip_l14_336", f"llm={llm}"])
    with torch.device("meta"):
        model = build_model(cfg, image_token_id=-1, load_weights=False)
    count = sum(p.numel() for p in model.connector.parameters())
    assert count == model.connector.formula_parameters()
    assert model.num_image_tokens == EXPECTED_TOKENS.get(
        name, model.connector.num_tokens(model.vision.num_patches)
    )  # a new one: pin it here
    if name == "mlp":
        assert count == {"vicuna7b": 20_979_712, "vicuna13b": 31_467_520}[llm]


def test_identity_needs_equal_widths():
    assert tiny_connector("identity")(torch.ones(1, 4, 24)).eq(1).all()
    with pytest.raises(Exception, match="vision_dim == llm_dim"):
        tiny_connector("identity", vision_dim=24, llm_dim=32)


def test_mlp2x_gelu_is_linear_gelu_linear():
    mlp = tiny_connector("mlp").mlp
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELUActivation", "Linear"]


def test_pixel_shuffle_folds_neighbours():
    connector = tiny_connector("pixel_shuffle", vision_dim=1, llm_dim=4)
    torch.nn.init.eye_(connector.proj.weight)
    grid = torch.arange(16.0).view(1, 16, 1)  # a 4x4 grid numbered row by row
    out = connector(grid)
    assert out[0, 0].tolist() == [0.0, 1.0, 4.0, 5.0] and out[0, 3].tolist() == [10.0, 11.0, 14.0, 15.0]
    odd = connector(torch.arange(9.0).view(1, 9, 1))  # 3x3 grid, zero-padded to 4x4
    assert connector.num_tokens(9) == 4 and odd.shape == (1, 4, 4)
    assert odd[0, 0].tolist() == [0.0, 1.0, 3.0, 4.0] and odd[0, 3].tolist() == [8.0, 0.0, 0.0, 0.0]


def test_instruction_changes_instruct_qformer_output():
    connector = tiny_connector("qformer_instruct").eval()
    patches = torch.randn(1, 36, 24)
    mask = torch.ones(1, 3, dtype=torch.long)
    a = connector(patches, instruction_ids=torch.tensor([[5, 6, 7]]), instruction_mask=mask)
    b = connector(patches, instruction_ids=torch.tensor([[8, 9, 10]]), instruction_mask=mask)
    assert not torch.allclose(a, b)


def test_qformer_bert_initialisation(tmp_path):
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=30)
    )
    bert.save_pretrained(tmp_path / "bert")
    connector = QFormerConnector(
        24,
        24,
        num_queries=5,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        init_from_bert=str(tmp_path / "bert"),
    )
    connector.load_pretrained()
    own, ref = connector.qformer.state_dict(), bert.state_dict()
    assert torch.equal(
        own["encoder.layer.1.attention.attention.query.weight"], ref["encoder.layer.1.attention.self.query.weight"]
    )
    assert torch.equal(
        own["encoder.layer.0.intermediate_query.dense.weight"], ref["encoder.layer.0.intermediate.dense.weight"]
    )
    assert torch.equal(own["encoder.layer.0.output_query.dense.weight"], ref["encoder.layer.0.output.dense.weight"])
    assert torch.equal(
        own["encoder.layer.0.attention.output.dense.weight"], ref["encoder.layer.0.attention.output.dense.weight"]
    )
    assert torch.equal(own["layernorm.weight"], ref["embeddings.LayerNorm.weight"])
