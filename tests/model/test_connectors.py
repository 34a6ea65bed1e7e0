"""Each connector runs forward/backward on tiny sizes and emits the token count it reports."""

import pytest
import torch

from lmm.model.connectors import LinearConnector, MLPConnector, QFormerConnector

TINY = {
    "linear": lambda: LinearConnector(vision_dim=24, llm_dim=40),
    "mlp2x_gelu": lambda: MLPConnector(vision_dim=24, llm_dim=40),
    "mlp3x_gelu": lambda: MLPConnector(vision_dim=24, llm_dim=40, depth=3),
    "qformer": lambda: QFormerConnector(
        vision_dim=24, llm_dim=40, num_queries=5, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64
    ),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_and_token_count(name):
    torch.manual_seed(0)
    connector = TINY[name]()
    patches = torch.randn(3, 16, 24, requires_grad=True)
    out = connector(patches)
    assert out.shape == (3, connector.num_tokens(16), 40)
    out.square().mean().backward()
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    assert all(p.grad is not None for p in connector.parameters() if p.requires_grad)


def test_mlp2x_gelu_is_linear_gelu_linear():
    mlp = MLPConnector(vision_dim=1024, llm_dim=5120).mlp
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELUActivation", "Linear"]
    assert sum(p.numel() for p in mlp.parameters()) == 31_467_520


def test_qformer_token_count_is_independent_of_patches():
    connector = TINY["qformer"]()
    assert connector.num_tokens(16) == connector.num_tokens(576) == 5
    assert connector(torch.randn(2, 9, 24)).shape == (2, 5, 40)


def test_mlp_rejects_zero_depth():
    with pytest.raises(ValueError, match="depth"):
        MLPConnector(vision_dim=4, llm_dim=4, depth=0)
