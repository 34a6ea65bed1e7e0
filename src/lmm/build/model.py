"""Instantiate the LMM from the vision / connector / llm config groups."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmm.data.anyres import AnyRes
from lmm.model.attention import use_packed_attention
from lmm.model.lmm import LMM
from lmm.model.vision import VisionTower

ANYRES_KEYS = (
    "grid_pinpoints",
    "max_tiles",
    "anyres_overview",
    "image_newline",
    "tile_pool",
)  # conf/config.yaml's vision block


def build_tower(vision_cfg: DictConfig, **kwargs) -> VisionTower:
    """The tower a `vision` config names; its AnyRes keys are the model's, not the tower's."""
    tower_cfg = {k: v for k, v in OmegaConf.to_container(vision_cfg, resolve=True).items() if k not in ANYRES_KEYS}
    return instantiate(tower_cfg, **kwargs)


def build_model(cfg: DictConfig, image_token_id: int, load_weights: bool = True) -> LMM:
    """Vision and LLM first (their widths fix the connector's), then the connector between them.

    With `load_weights=False` nothing is read from disk: real-size configs build from their
    `arch` alone (use under `torch.device("meta")` to inspect them for free). With
    `data.packing` the LLM attends per sample (lmm.model.attention).
    """
    vision = build_tower(cfg.vision, load_weights=load_weights)
    anyres = AnyRes.from_config(cfg.vision, vision.image_size) if vision.image_aspect == "anyres" else None
    llm = instantiate(cfg.llm.model, load_weights=load_weights)
    if cfg.data.get("packing"):
        use_packed_attention(llm)
    connector = instantiate(cfg.connector, vision_dim=vision.hidden_size, llm_dim=llm.config.hidden_size)
    if load_weights:
        connector.load_pretrained()  # e.g. the Q-Former's BERT initialisation
    return LMM(vision, connector, llm, image_token_id, anyres, loss=cfg.get("model", {}).get("loss", "plain"))
