"""Connectors: patch features [B, P, Dv] -> visual tokens in the LLM's width [B, N, D].

Adding a connector is one class (in this package) and one yaml in conf/connector/. Every
connector takes `vision_dim` and `llm_dim` (filled in by the model builder), reports
`num_tokens(P)`, and states its parameter count as `formula_parameters()`.
"""

from lmm.model.connectors.base import Connector, IdentityConnector, LinearConnector, MLPConnector
from lmm.model.connectors.convolutional import CAbstractorConnector, LDPConnector
from lmm.model.connectors.pixel_shuffle import PixelShuffleConnector
from lmm.model.connectors.qformer import InstructQFormerConnector, QFormerConnector
from lmm.model.connectors.resampler import PerceiverResamplerConnector, ResamplerConnector

__all__ = [
    "Connector",
    "IdentityConnector",
    "LinearConnector",
    "MLPConnector",
    "QFormerConnector",
    "InstructQFormerConnector",
    "ResamplerConnector",
    "PerceiverResamplerConnector",
    "CAbstractorConnector",
    "LDPConnector",
    "PixelShuffleConnector",
]
