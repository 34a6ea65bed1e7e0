"""Instantiate the LMM: each component from its own config subtree (vision, connector, llm, anyres).

`build_model(cfg)` is the one place that reads the whole config for the model: it hands the tower
`cfg.vision`, the LLM `cfg.llm.model`, the connector `cfg.connector`, AnyRes `cfg.anyres`, and
passes the two run-level choices the model needs (`data.packing`, `model.loss`) as plain values.
"""

from __future__ import annotations

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from lmm.data.anyres import AnyRes
from lmm.model.attention import use_packed_attention
from lmm.model.connectors import Connector
from lmm.model.lmm import LMM
from lmm.model.vision import VisionTower


def build_tower(vision_cfg: DictConfig, **kwargs) -> VisionTower:
    """The tower a `vision` config names."""
    return instantiate(vision_cfg, **kwargs)


def build_model(cfg: DictConfig, image_token_id: int, load_weights: bool = True) -> LMM:
    """The model a whole config describes (see the module docstring for what each part receives)."""
    return assemble(
        cfg.vision,
        cfg.connector,
        cfg.llm.model,
        OmegaConf.select(cfg, "anyres", default=None),
        image_token_id=image_token_id,
        load_weights=load_weights,
        packing=bool(OmegaConf.select(cfg, "data.packing", default=False)),
        loss=str(OmegaConf.select(cfg, "model.loss", default="plain")),
    )


def assemble(
    vision_cfg: DictConfig,
    connector_cfg: DictConfig,
    llm_cfg: DictConfig,
    anyres_cfg: DictConfig | None,
    *,
    image_token_id: int,
    load_weights: bool = True,
    packing: bool = False,
    loss: str = "plain",
) -> LMM:
    """Vision and LLM first (their widths fix the connector's), then the connector between them.

    With `load_weights=False` nothing is read from disk: real-size configs build from their
    `arch` alone (use under `torch.device("meta")` to inspect them for free). With `packing`
    the LLM attends per sample (lmm.model.attention). AnyRes applies when the tower's
    `image_aspect` is `anyres`.
    """
    vision = build_tower(vision_cfg, load_weights=load_weights)
    anyres = AnyRes.from_config(anyres_cfg or {}, vision.image_size) if vision.image_aspect == "anyres" else None
    llm = instantiate(llm_cfg, load_weights=load_weights)
    if packing:
        use_packed_attention(llm)
    connector, tokens = build_connector(connector_cfg, vision.hidden_size, llm.config.hidden_size)
    if load_weights:
        connector.load_pretrained()  # e.g. the Q-Former's BERT initialisation
    return LMM(vision, connector, llm, image_token_id, anyres, loss=loss, tokens=tokens)


def build_connector(connector_cfg: DictConfig, vision_dim: int, llm_dim: int) -> tuple[Connector, int | None]:
    """The connector, and its visual-token budget (`tokens`, null: the connector's own count).

    A sequence connector reaches the budget itself (its query count, `budget_arguments`); for a
    grid connector the budget goes to the model, which pools the grid (LMM's `tokens`)."""
    tokens = connector_cfg.get("tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ValueError(f"connector.tokens={tokens!r} must be a positive whole number of visual tokens, or null")
    arguments = {key: value for key, value in connector_cfg.items() if key != "tokens"}
    if tokens is not None:
        arguments.update(get_class(connector_cfg["_target_"]).budget_arguments(tokens) or {})
    connector = instantiate(OmegaConf.create(arguments), vision_dim=vision_dim, llm_dim=llm_dim)
    return connector, tokens
