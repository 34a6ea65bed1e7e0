"""lmm: controlled ablations of LLaVA-1.5-style multimodal models (vision -> connector -> LLM)."""

__version__ = "0.1.0"
