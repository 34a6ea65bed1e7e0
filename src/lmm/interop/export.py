"""task=export: a finished run as a directory other tools load.

    lmm export RUN_DIR export.format=hf    # transformers' LlavaForConditionalGeneration (AnyRes: LlavaNext...)
    lmm export RUN_DIR export.format=lmm   # lmm's own: lmm.load_pretrained(path)

The run's model config is read from RUN_DIR/.hydra/config.yaml (the command's own config when a
run has none). HF's Llava format knows one projector, LLaVA-1.5's 2-layer MLP with GELU, and
Hugging Face vision towers (CLIP, SigLIP); with vision.image_aspect=anyres the export is
LlavaNext (the overview, the newline and no tile pooling, as HF's LlavaNext knows it); anything else is refused
with the reason, and
`export.format=lmm` (self-describing: config + safetensors + tokenizer) takes every model.
LoRA runs need nothing special: their final.safetensors is already merged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lmm.build.factory import (
    LMM_CONFIG,
    LMM_FORMAT_VERSION,
    LMM_TOKENIZER,
    LMM_WEIGHTS,
    MODEL_KEYS,
    build_trained,
    run_config,
    say_drift,
)
from lmm.core.save import save_weights
from lmm.data.conversation import IMAGE_TOKEN, TEMPLATES, Template, llava_tokenized
from lmm.data.tokenizer import save_tokenizer
from lmm.model.lmm import LMM
from lmm.run.directory import FINAL_WEIGHTS, export_dir


class ExportError(ValueError):
    """A model that the requested format cannot represent."""


# ---------------------------------------------------------------------------------------------
# lmm's own format


def save_lmm(model: LMM, processor, cfg: DictConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in MODEL_KEYS}
    config["llm"]["tokenizer"] = LMM_TOKENIZER  # relative to the export directory
    config["stage"] = {"template": processor.template}
    config["data"] = {
        "max_length": processor.max_length,
        "image": {"alpha": processor.image_transform.alpha, "exif": processor.image_transform.exif},
    }
    config["format_version"] = LMM_FORMAT_VERSION
    OmegaConf.save(OmegaConf.create(config), out / LMM_CONFIG)
    save_weights(model, out / LMM_WEIGHTS)
    save_tokenizer(processor.tokenizer, out / LMM_TOKENIZER)


# ---------------------------------------------------------------------------------------------
# Hugging Face Llava


def image_separator(tokenizer, template_name: str) -> str:
    """What follows each `<image>` in the exported chat template. HF's processor tokenizes the
    prompt in one call; LLaVA tokenizes the piece after an image on its own, so a SentencePiece
    tokenizer starts it with "▁" whatever its `legacy` flag. A non-legacy tokenizer adds no "▁"
    after a special token in one call, and " \n" there gives exactly LLaVA's "▁" "\n"."""
    if not llava_tokenized(template_name):
        return "\n"
    alone = tokenizer("\nWhat", add_special_tokens=False)["input_ids"]
    for separator in ("\n", " \n"):
        if tokenizer(IMAGE_TOKEN + separator + "What", add_special_tokens=False)["input_ids"][1:] == alone:
            return separator
    raise ExportError(
        "no chat template makes this tokenizer's one-call ids after <image> equal LLaVA's; use export.format=lmm"
    )


def chat_template(template: Template, separator: str = "\n", bos: bool = False) -> str:
    """A Jinja chat template that renders like `template` (images first in a user turn, as LLaVA),
    each image followed by `separator` (image_separator); `bos`: it writes the BOS token itself
    (lmm prepends one to every prompt; a tokenizer that adds none needs the template to)."""

    def literal(text: str) -> str:
        return "{{ " + repr(text) + " }}"

    user_prefix, user_suffix = template.user_format.split("{content}")
    reply_prefix, reply_suffix = template.reply_format.split("{content}")
    content = (
        "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
        "{%- for part in message['content'] if part['type'] == 'image' -%}"
        + literal(IMAGE_TOKEN + separator)
        + "{%- endfor -%}"
        "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}{%- endif -%}"
    )
    system = literal(template.system_format.format(system=template.system)) if template.system_format else ""
    return (
        ("{{ bos_token }}" if bos else "") + system + "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        + literal(user_prefix)
        + content
        + literal(user_suffix)
        + "{%- elif message['role'] == 'assistant' -%}"
        + literal(reply_prefix)
        + content
        + literal(reply_suffix + template.end_of_turn + template.after_reply)
        + "{%- endif -%}{%- endfor -%}"
    )


def _check_hf_compatible(model: LMM, template_name: str) -> Template:
    from lmm.model.connectors.base import MLPConnector
    from lmm.model.vision import HFVisionTower

    connector = model.connector
    is_mlp2x_gelu = isinstance(connector, MLPConnector) and connector.depth == 2 and connector.activation == "gelu"
    if not is_mlp2x_gelu:
        raise ExportError(
            f"HF's Llava format only knows LLaVA-1.5's 2-layer MLP projector (mlp2x_gelu), not "
            f"{type(connector).__name__}; use export.format=lmm"
        )
    if model.pooled_side is not None:
        raise ExportError(
            f"HF's Llava never pools the projector's tokens (connector.tokens={model.num_image_tokens}); "
            "use export.format=lmm"
        )
    if not isinstance(model.vision, HFVisionTower):
        raise ExportError(
            f"HF's Llava format needs a transformers vision tower (CLIP, SigLIP), not {type(model.vision).__name__}; "
            "use export.format=lmm"
        )
    if model.anyres is not None:
        anyres = model.anyres
        if not (anyres.overview and anyres.newline and anyres.pool == 1):
            raise ExportError(
                "HF's LlavaNext always has the overview and the row newline, and never pools tiles: export "
                "anyres.overview=true, anyres.image_newline=true, anyres.tile_pool=1, or use export.format=lmm"
            )
        if model.vision.select_feature != "patch":
            raise ExportError(
                "HF's LlavaNext lays out a grid of patch tokens: vision.select_feature=patch (not cls_patch), "
                "or use export.format=lmm"
            )
    template = TEMPLATES.get(template_name)
    if template is None or template.first_user_format:
        raise ExportError(
            f"the {template_name} template has no HF chat template here (a pretrain-stage run, or Llama-2's "
            "system-in-first-turn format); use export.format=lmm"
        )
    return template


def save_hf(model: LMM, processor, cfg: DictConfig, out: Path) -> None:
    """LlavaForConditionalGeneration + LlavaProcessor, or with vision.image_aspect=anyres
    LlavaNextForConditionalGeneration + LlavaNextProcessor (the same grid pinpoints, tiles,
    unpadding and newline embedding as lmm's AnyRes)."""
    import transformers
    from transformers import GenerationConfig

    from lmm.eval.generate import end_of_turn_ids

    kind = "LlavaNext" if model.anyres is not None else "Llava"
    config_class, model_class = (
        getattr(transformers, f"{kind}Config"),
        getattr(transformers, f"{kind}ForConditionalGeneration"),
    )
    image_processor_class, processor_class = (
        getattr(transformers, f"{kind}ImageProcessor"),
        getattr(transformers, f"{kind}Processor"),
    )

    template = _check_hf_compatible(model, processor.template)
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llm_state = {k: v.detach().clone() for k, v in model.llm.state_dict().items()}
    vocab = model.llm.get_input_embeddings().num_embeddings
    text_config = model.llm.config.to_dict()
    padded = []
    if image_token_id >= vocab:  # HF embeds input ids before replacing image positions: give <image> a row
        new_vocab = (image_token_id // 64 + 1) * 64  # as llava-hf did (32000 -> 32064)
        padded = list(range(vocab, new_vocab))
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = llm_state[key]
            llm_state[key] = torch.cat([rows, rows.new_zeros(new_vocab - vocab, rows.shape[1])])
        text_config["vocab_size"] = new_vocab
    strategy = "default" if model.vision.select_feature == "patch" else "full"
    anyres = {} if model.anyres is None else {"image_grid_pinpoints": [list(p) for p in model.anyres.pinpoints]}
    config = config_class(
        vision_config=model.vision.model.config.to_dict(),
        text_config=text_config,
        image_token_index=image_token_id,
        vision_feature_layer=model.vision.select_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
        image_seq_length=model.num_image_tokens,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.get("tie_word_embeddings", False)),
        **anyres,
    )
    state = {f"model.vision_tower.{k}": v for k, v in model.vision.model.state_dict().items()}
    state |= {f"model.multi_modal_projector.linear_1.{k}": v for k, v in model.connector.mlp[0].state_dict().items()}
    state |= {f"model.multi_modal_projector.linear_2.{k}": v for k, v in model.connector.mlp[2].state_dict().items()}
    state |= {f"model.language_model.{k[len('model.') :]}": v for k, v in llm_state.items() if k.startswith("model.")}
    state["lm_head.weight"] = llm_state["lm_head.weight"]
    if model.anyres is not None:
        state["model.image_newline"] = model.connector.anyres_tokens.newline.detach().clone()
    with torch.device("meta"):
        hf = model_class(config)
    hf.load_state_dict(state, strict=True, assign=True)
    hf.generation_config = GenerationConfig(
        eos_token_id=end_of_turn_ids(tokenizer, processor.template),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        suppress_tokens=[image_token_id, *padded] or None,
    )
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    size = model.vision.image_size
    # LLaVA-1.5's pad-to-square (mean colour) when the run used it; otherwise resize + centre crop.
    # Pixels agree with lmm's transform to ~0.01 mean absolute difference (PIL's bicubic vs torch's).
    # AnyRes: the tiles centred on black and the squashed overview, as lmm's AnyRes makes them.
    image_processor = image_processor_class(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(model.vision.mean),
        image_std=list(model.vision.std),
        do_pad=model.vision.image_aspect in ("pad", "anyres"),
        **anyres,
    )
    hf_tokenizer = _copy_tokenizer(tokenizer)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    hf_tokenizer.chat_template = chat_template(
        template,
        image_separator(tokenizer, processor.template),
        bos=tokenizer.bos_token_id is not None and not adds_bos,
    )
    hf_processor = processor_class(
        image_processor=image_processor,
        tokenizer=hf_tokenizer,
        patch_size=model.vision.patch_size,
        vision_feature_select_strategy=strategy,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1 if _has_cls(model) else 0,
        chat_template=hf_tokenizer.chat_template,
    )
    hf_processor.save_pretrained(str(out))


def _has_cls(model: LMM) -> bool:
    from lmm.model.vision import CLIPVisionTower

    return isinstance(model.vision, CLIPVisionTower)


def _copy_tokenizer(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)


FORMATS = {"hf": save_hf, "lmm": save_lmm}  # export.format -> its writer


def export(cfg: DictConfig) -> Path:
    if not cfg.get("ckpt"):
        raise ValueError("task=export needs ckpt=RUN_DIR (a finished run)")
    run_dir = Path(cfg.ckpt)
    fmt = cfg.export.format
    if fmt not in FORMATS:
        raise ValueError(f"export.format={fmt!r} is not one of {sorted(FORMATS)}")
    weights = run_dir / FINAL_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"no {FINAL_WEIGHTS} in {run_dir}: export needs a finished run")
    run_cfg = run_config(run_dir, cfg)
    say_drift(run_dir, run_cfg, cfg, "exporting")
    model, processor = build_trained(run_cfg, weights)
    out = Path(cfg.export.out or export_dir(run_dir, fmt))
    if out.exists():
        shutil.rmtree(out)
    FORMATS[fmt](model, processor, run_cfg, out)
    print(f"[lmm] exported {run_dir} as {fmt} to {out}")
    return out
