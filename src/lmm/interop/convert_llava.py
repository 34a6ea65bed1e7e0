"""Import an official LLaVA-1.5 checkpoint (haotian-liu/LLaVA's format) as an lmm directory.

    lmm convert-llava PATH [--out DIR] [--vision-tower DIR_OR_ID] [--base-llm DIR_OR_ID]

PATH holds `config.json` (model_type `llava_llama`: the LLM's Llama fields plus `mm_projector_type`,
`mm_vision_tower`, `mm_vision_select_layer`, `mm_vision_select_feature`, `mm_hidden_size`,
`image_aspect_ratio`), the weights (`*.safetensors` or `pytorch_model*.bin`; LLM + `model.mm_projector.*`)
and the tokenizer. A pretrain-only run has `mm_projector.bin` and no LLM weights: the LLM then
comes from `--base-llm` (default: the config's `_name_or_path`). The vision tower is never in
these checkpoints (unless the tower was tuned: then its `model.vision_tower.*` weights are used
over the base tower's); it is read from `--vision-tower` (default: `mm_vision_tower`), locally —
lmm never downloads. The result loads with `lmm.load_pretrained(DIR)` and is scored with
`lmm eval DIR eval=llava15`.

Every setting of the source is kept or refused: the tokenizer's files are copied byte for byte
(re-saving through transformers would drop `legacy`, and with it the ids LLaVA trained on), every
Llama setting is copied into the LLM config (rope scaling, activation, biases, token ids, ...),
and a setting lmm cannot honour (`mm_use_im_start_end`, a merge type other than flat, an unknown
key) is refused in one line instead of being dropped.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch, transformers and the model code are imported where they are used: `--help` and a usage
# error answer at once.

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TOWERS = {
    "clip_vision_model": "lmm.model.vision.CLIPVisionTower",
    "siglip_vision_model": "lmm.model.vision.SiglipVisionTower",
}
ASPECTS = {"pad": "pad", "square": "resize", "resize": "resize", None: "crop"}  # LLaVA's image_aspect_ratio -> lmm's
# Llama settings copied into the LLM's config as they are (rope_scaling/rope_theta: transformers 5 reads them into
# rope_parameters).
LLM_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "hidden_act",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "pretraining_tp",
    "tie_word_embeddings",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
# Read by the converter itself, or bookkeeping that does not change the model's answers.
HANDLED_KEYS = {
    "model_type",
    "architectures",
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "use_cache",
    "max_length",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "mm_projector_type",
    "mm_vision_tower",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "mm_hidden_size",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "freeze_mm_mlp_adapter",
    "tune_mm_mlp_adapter",
    "use_mm_proj",
    "mm_projector_lr",
    "mm_vision_tower_lr",
    "unfreeze_mm_vision_tower",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "mm_patch_merge_type",
    "s2",
    "s2_scales",
    "_attn_implementation",
    "attn_implementation",
    "id2label",
    "label2id",
    "problem_type",
    "is_encoder_decoder",
    "chunk_size_feed_forward",
}
# Settings with a value lmm cannot honour: (key, the values it can), each refused in one line.
SUPPORTED_VALUES = {
    "mm_use_im_start_end": (False, None),
    "mm_use_im_patch_token": (False, None),
    "s2": (False, None),
    "mm_patch_merge_type": ("flat", None),
    "mm_vision_select_feature": ("patch", "cls_patch", None),
}
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
TOWER_PREFIX = (
    "model.vision_tower.vision_tower."  # a tuned tower's weights in the checkpoint (unfreeze_mm_vision_tower)
)


class ConversionError(ValueError):
    """A checkpoint this converter does not understand; the message says what it found."""


def read_state(path: Path) -> dict:
    """Every tensor in the checkpoint's weight files (safetensors preferred)."""
    import torch
    from safetensors.torch import load_file

    files = (
        sorted(path.glob("*.safetensors"))
        or sorted(path.glob("pytorch_model*.bin"))
        or sorted(path.glob("mm_projector.bin"))
    )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state |= (
            load_file(str(file))
            if file.suffix == ".safetensors"
            else torch.load(file, map_location="cpu", weights_only=True)
        )
    return state


def connector_config(config: dict, state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """lmm's connector config and weights for `mm_projector_type` (linear or mlpNx_gelu)."""
    kind = config.get("mm_projector_type", "linear")
    projector = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    if not projector:
        raise ConversionError("no mm_projector weights in the checkpoint (looked for keys containing 'mm_projector.')")
    if kind == "linear":
        return {"_target_": "lmm.model.connectors.LinearConnector"}, {
            f"connector.proj.{k}": v for k, v in projector.items()
        }
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise ConversionError(f"mm_projector_type={kind!r} is not one lmm imports (linear, mlpNx_gelu)")
    return (
        {"_target_": "lmm.model.connectors.MLPConnector", "depth": int(match.group(1)), "activation": "gelu"},
        {f"connector.mlp.{k}": v for k, v in projector.items()},
    )


def check_tower_settings(tower_config: dict, stats: dict, tower: Path, keys: tuple[str, ...]) -> None:
    """The tower's copied settings are plain values and its normalisation three numbers each (refused otherwise)."""
    processor = tower / "preprocessor_config.json"
    for key in keys:
        if key in tower_config and not scalar(tower_config[key]):
            raise ConversionError(
                f"{tower / 'config.json'}: {key}={tower_config[key]!r} is not a plain setting (refused)"[:300]
            )
    for key in ("image_mean", "image_std"):
        value = stats.get(key, CLIP_MEAN)
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ConversionError(f"{processor}: {key}={value!r} must be three numbers (refused)"[:300])


def vision_config(config: dict, tower: Path) -> dict:
    tower_config = json.loads((tower / "config.json").read_text())
    tower_config = tower_config.get("vision_config", tower_config) | {"model_type": tower_config.get("model_type", "")}
    model_type = tower_config["model_type"]
    model_type = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}.get(model_type, model_type)
    if model_type not in TOWERS:
        raise ConversionError(f"vision tower {tower} is a {model_type!r}; lmm imports CLIP and SigLIP towers")
    keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "projection_dim",
        "hidden_act",
        "layer_norm_eps",
        "num_channels",
    )
    processor = tower / "preprocessor_config.json"
    stats = json.loads(processor.read_text()) if processor.exists() else {}
    check_tower_settings(tower_config, stats, tower, keys)
    return {
        "_target_": TOWERS[model_type],
        "arch": {k: tower_config[k] for k in keys if k in tower_config},
        "pretrained": None,
        "select_layer": int(config.get("mm_vision_select_layer", -2)),
        "select_feature": "cls_patch" if config.get("mm_vision_select_feature") == "cls_patch" else "patch",
        "image_aspect": ASPECTS[config.get("image_aspect_ratio")],
        "mean": stats.get("image_mean", CLIP_MEAN),
        "std": stats.get("image_std", CLIP_STD),
    }


def scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def plain(value) -> bool:
    """A setting's value as data: a scalar, a list of scalars, or (rope scaling) a dict of those."""
    flat = lambda v: scalar(v) or (isinstance(v, list) and all(scalar(x) for x in v))  # noqa: E731
    return flat(value) or (
        isinstance(value, dict)
        and all(isinstance(k, str) and not k.startswith("_") and flat(v) for k, v in value.items())
    )


def check_settings(config: dict) -> None:
    """Refuse, in one line, a setting the import would otherwise drop, and any value that is not
    plain data (what is copied into lmm's config is built from at every later load)."""
    from lmm.core.safe_config import UntrustedConfig, check_config

    try:
        check_config(config, "config.json")
    except UntrustedConfig as e:
        raise ConversionError(str(e)) from None
    for key in LLM_KEYS:
        if key in config and not plain(config[key]):
            raise ConversionError(
                f"config.json: {key}={config[key]!r} is not a plain setting (numbers, strings, lists; refused)"[:300]
            )
    for key, supported in SUPPORTED_VALUES.items():
        if config.get(key) not in supported:
            raise ConversionError(
                f"{key}={config[key]!r} is not something lmm can honour "
                f"(it supports {[v for v in supported if v is not None]})"
            )
    unknown = sorted(k for k in config if k not in HANDLED_KEYS and k not in LLM_KEYS)
    if unknown:
        raise ConversionError(f"config.json has settings lmm does not know: {unknown} (refused rather than dropped)")


def copy_tokenizer(path: Path, out: Path) -> None:
    """The checkpoint's tokenizer files, byte for byte (their `legacy` flag decides LLaVA's ids)."""
    files = [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not any(f.name in ("tokenizer.model", "tokenizer.json") for f in files):
        raise ConversionError(f"{path} has no tokenizer (tokenizer.model or tokenizer.json)")
    out.mkdir(parents=True, exist_ok=True)
    for file in files:
        (out / file.name).write_bytes(file.read_bytes())


def convert(path: Path, out: Path, vision_tower: str | None = None, base_llm: str | None = None) -> Path:
    from omegaconf import OmegaConf

    from lmm.build.factory import LMM_CONFIG, LMM_FORMAT_VERSION, LMM_WEIGHTS, build_run
    from lmm.core.save import save_weights
    from lmm.core.weights import resolve_weights
    from lmm.model.language import build_language_model

    config_file = path / "config.json"
    if not config_file.exists():
        raise ConversionError(f"{path} has no config.json; is it a LLaVA checkpoint directory?")
    config = json.loads(config_file.read_text())
    if config.get("model_type") not in ("llava_llama", "llava") or "mm_vision_tower" not in config:
        raise ConversionError(
            f"{config_file}: model_type={config.get('model_type')!r} is not an official LLaVA checkpoint "
            "(expected llava_llama with mm_vision_tower); for HF's llava-hf format use transformers directly"
        )
    aspect = config.get("image_aspect_ratio")
    if (
        aspect not in ASPECTS
    ):  # e.g. LLaVA-NeXT's "anyres" / "anyres_max_9": read as pad it would be a silently different model
        raise ConversionError(
            f"{config_file}: image_aspect_ratio={aspect!r} is not LLaVA-1.5's "
            f"(one of {sorted(k for k in ASPECTS if k)} "
            "or none); LLaVA-NeXT checkpoints are not imported: load them in transformers (llava-hf LlavaNext)"
        )
    check_settings(config)
    state = read_state(path)
    try:
        tower = resolve_weights(vision_tower or config["mm_vision_tower"], "vision weights")
    except FileNotFoundError as e:
        raise ConversionError(
            f"vision tower not found ({e}); pass --vision-tower DIR (a local copy of {config['mm_vision_tower']})"
        ) from None
    arch = {"model_type": "llama", **{k: config[k] for k in LLM_KEYS if k in config}}
    llm_state = {k: v for k, v in state.items() if "mm_projector" not in k and "vision_tower" not in k}
    tuned_tower = {k[len(TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    pretrain_only = not llm_state
    if pretrain_only:  # a stage-1 run: the LLM is the base model it was trained on
        base = resolve_weights(base_llm or config.get("_name_or_path", ""), "LLM weights")
        llm_state = build_language_model(arch, pretrained=str(base)).state_dict()
    connector, connector_state = connector_config(config, state)
    cfg = OmegaConf.create(
        {
            "vision": vision_config(config, Path(tower)),
            "connector": connector,
            "llm": {
                "model": {
                    "_target_": "lmm.model.language.build_language_model",
                    "pretrained": None,
                    "dtype": "float32",
                    "trust_remote_code": False,
                    "arch": arch,
                },
                "tokenizer": str(path),
                "template": "vicuna_v1" if not pretrain_only else "plain",
            },
            "stage": {"template": "plain" if pretrain_only else "vicuna_v1"},
            "data": {
                "max_length": int(config.get("tokenizer_model_max_length", config.get("max_position_embeddings", 2048)))
            },
        }
    )
    model, processor = build_run(cfg, load_weights=False)
    tower_model = type(model.vision.model).from_pretrained(str(tower))
    weights = {f"vision.model.{k}": v for k, v in (tower_model.state_dict() | tuned_tower).items()}
    weights |= connector_state
    weights |= {f"llm.{k}": v for k, v in llm_state.items()}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape than config.json describes
        raise ConversionError(
            f"weights do not fit config.json: {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}"
        ) from None
    if missing or unexpected:
        raise ConversionError(f"weights do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    out.mkdir(parents=True, exist_ok=True)
    cfg.llm.tokenizer = "tokenizer"
    cfg.format_version = LMM_FORMAT_VERSION
    OmegaConf.save(cfg, out / LMM_CONFIG)
    save_weights(model, out / LMM_WEIGHTS)
    copy_tokenizer(path, out / "tokenizer")
    print(
        f"[lmm] {path} ({config.get('mm_projector_type', 'linear')}, {'pretrain only' if pretrain_only else 'full'}) "
        f"-> {out}"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "path", type=Path, help="the LLaVA checkpoint directory: config.json (llava_llama), weights, tokenizer files"
    )
    parser.add_argument("--out", type=Path, help="where the lmm directory goes (default: PATH-lmm beside PATH)")
    parser.add_argument(
        "--vision-tower",
        help="a local copy of the CLIP/SigLIP tower the checkpoint names in mm_vision_tower "
        "(default: that name, looked up locally: path, $LMM_WEIGHTS, HF cache)",
    )
    parser.add_argument(
        "--base-llm",
        help="a pretrain-only checkpoint (mm_projector.bin alone): the LLM it was trained on "
        "(default: the config's _name_or_path, looked up locally)",
    )
    args = parser.parse_args(argv)
    try:
        convert(args.path, args.out or args.path.with_name(args.path.name + "-lmm"), args.vision_tower, args.base_llm)
    except (ConversionError, FileNotFoundError) as e:
        raise SystemExit(f"[lmm] cannot convert {args.path}: {e}") from None


if __name__ == "__main__":
    main()
