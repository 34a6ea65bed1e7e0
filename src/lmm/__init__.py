"""lmm: controlled ablations of LLaVA-1.5-style multimodal models (vision -> connector -> LLM)."""

__version__ = "0.1.0"


def load_pretrained(path, device="cpu"):
    """(model, processor) from an `export.format=lmm` directory or a finished run directory."""
    from lmm.build.factory import load_pretrained as load

    return load(path, device)
