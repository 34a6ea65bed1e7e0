"""Language models: a Hugging Face causal LM built from an architecture dict or local weights."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lmm.core.weights import resolve_weights


def build_language_model(
    arch: dict,
    pretrained: str | None = None,
    load_weights: bool = True,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Random-init from `arch` (`model_type` + config fields), or load `pretrained` from local files.

    `trust_remote_code` stays off unless the config sets it: a checkpoint's own Python never
    runs by default. `arch` is what `task=describe` builds on the meta device, so real-size configs can be
    inspected without weights; when weights are loaded their config must agree with it.
    """
    # Plain containers: nested settings (rope_scaling, a list of eos ids) arrive as DictConfig/ListConfig.
    arch = OmegaConf.to_container(arch, resolve=True) if isinstance(arch, DictConfig) else dict(arch)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    if not (pretrained and load_weights):
        return AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
    path = resolve_weights(pretrained, "LLM weights")
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if getattr(model.config, key) != getattr(config, key):
            raise ValueError(
                f"weights at {path} have {key}={getattr(model.config, key)} but the llm config says "
                f"{getattr(config, key)}; fix the llm yaml's arch to describe these weights"
            )
    return model
