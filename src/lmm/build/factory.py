"""The factory: a model and its sample processor from a config, a finished run or an lmm directory.

    build_run(cfg)          tokenizer + model + the SampleProcessor that matches them
    build_for_stage(cfg)    the model a training stage starts from (pretrained weights,
                            stage.init_from, seeded random init; rank 0 alone under FSDP)
    load_pretrained(path)   a trained model from a run directory or an `export.format=lmm` directory

An lmm directory (written by `task=export export.format=lmm` and `lmm.interop.convert_llava`) is
self-describing: LMM_CONFIG (the vision / connector / llm config, the template, the max length),
LMM_WEIGHTS and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from lmm.build.meta import parameters_on_meta
from lmm.build.model import build_model
from lmm.build.stage import stage_of
from lmm.core.safe_config import check_config
from lmm.core.save import check_recorded_hash, read_weights
from lmm.core.upgrade import upgrade_config
from lmm.data.image import ImageTransform
from lmm.data.sample import SampleProcessor
from lmm.data.tokenizer import load_tokenizer
from lmm.model.lmm import LMM
from lmm.run.directory import FINAL_WEIGHTS, load_saved_config, read_status, saved_config_path

LMM_CONFIG, LMM_WEIGHTS, LMM_TOKENIZER = "config.yaml", "model.safetensors", "tokenizer"
LMM_FORMAT_VERSION = 1
MODEL_KEYS = ("vision", "connector", "llm", "anyres")  # what an lmm directory keeps of a run's config
NEWLINE_KEY = "anyres_tokens.newline"  # the AnyRes row-end embedding, kept in the connector


def pretrained_ids(cfg: DictConfig) -> dict[str, str | None]:
    """The weights each pretrained component names (None: random init from its arch)."""
    return {"vision": cfg.vision.get("pretrained"), "llm": cfg.llm.model.get("pretrained")}


def random_init_components(cfg: DictConfig) -> list[str]:
    """Components with no pretrained weights: their random init must travel with the connector."""
    return [component for component, name in pretrained_ids(cfg).items() if not name]


def build_run(cfg: DictConfig, load_weights: bool = True) -> tuple[LMM, SampleProcessor]:
    """Tokenizer, model and the sample processor that matches them."""
    tokenizer = load_tokenizer(cfg.llm.tokenizer)
    model = build_model(cfg, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), load_weights=load_weights)
    vocab = model.llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab + 1:  # the image token may lie one past the vocabulary (never embedded)
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the LLM embeds only {vocab}; raise llm.model.arch.vocab_size"
        )
    vision = model.vision
    transform = ImageTransform(
        vision.image_size,
        vision.mean,
        vision.std,
        vision.image_aspect,
        fill=vision.pad_colour,
        anyres=model.anyres,
        **image_options(cfg),
    )
    instruction_length = model.connector.max_instruction_length if model.connector.uses_instruction else None
    image_tokens = (
        model.num_image_tokens if model.anyres is None else model.image_tokens
    )  # AnyRes: a function of the image's size
    processor = SampleProcessor(
        tokenizer, cfg.stage.template, transform, image_tokens, cfg.data.max_length, instruction_length
    )
    return model, processor


def image_options(cfg: DictConfig) -> dict[str, str]:
    """How images are decoded (`data.image`: alpha, exif); LLaVA's way where a config (an lmm
    directory's, say) does not say."""
    return {
        "alpha": str(OmegaConf.select(cfg, "data.image.alpha", default="drop")),
        "exif": str(OmegaConf.select(cfg, "data.image.exif", default="ignore")),
    }


def init_weights_path(source: str) -> Path:
    """A finished run's final.safetensors (or a safetensors file), or a one-line error."""
    path = Path(source)
    path = path / FINAL_WEIGHTS if path.is_dir() or not path.suffix else path
    if not path.exists():
        raise FileNotFoundError(
            f"stage.init_from: no {FINAL_WEIGHTS} at {path}; run that stage first (has it finished?)"
        )
    return path


def recorded_sha256(weights: Path) -> str | None:
    """The sha256 a run recorded for its final.safetensors when it finished (None for other files)."""
    return read_status(Path(weights).parent).get("final_sha256") if Path(weights).name == FINAL_WEIGHTS else None


def init_from(model: LMM, source: str, components: list[str]) -> None:
    """Load `components` from a finished run (its final.safetensors, checked against its recorded
    sha256) or a safetensors file, reading only their tensors."""
    path = init_weights_path(source)
    check_recorded_hash(path, recorded_sha256(path))
    with safe_open(str(path), framework="pt") as weights:
        keys = list(weights.keys())
        for name in components:
            prefix = f"{name}."
            part = {k[len(prefix) :]: weights.get_tensor(k) for k in keys if k.startswith(prefix)}
            missing, unexpected = getattr(model, name).load_state_dict(part, strict=False)
            if name == "connector" and NEWLINE_KEY in missing and NEWLINE_KEY not in part:
                missing.remove(
                    NEWLINE_KEY
                )  # a projector pretrained without AnyRes: the newline starts random, as in LLaVA-NeXT
                print(f"[lmm] {path} has no AnyRes newline embedding: it starts from its random init")
            if unexpected or (missing and name == "connector"):
                raise ValueError(
                    f"stage.init_from {path}: {name} does not match (missing {missing[:3]}, unexpected "
                    f"{unexpected[:3]})"
                )
    print(f"[lmm] initialised {', '.join(components)} from {path}")


def build_for_stage(cfg: DictConfig, sharded: bool, main: bool) -> tuple[LMM, SampleProcessor, dict | None]:
    """The model a stage starts from: pretrained weights, `stage.init_from` (the connector and
    random-init parts) and the seeded random init of the rest.

    Sharded (FSDP): every rank builds on the meta device, and rank 0 (`main`) alone builds the real model
    and returns its full state (the stage applied: LoRA adapters included), which LMMModule
    broadcasts after sharding. Otherwise the returned model holds its weights and the state is
    None. Seeded here, so every rebuild (a resumed run, `lmm.train.checkpoint consolidate`) has the same init."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if not sharded:
        model, processor = build_run(cfg)
        if cfg.stage.init_from:
            init_from(model, cfg.stage.init_from, ["connector", *random_init_components(cfg)])
        return model, processor, None
    state = None
    if main:
        full, _, _ = build_for_stage(cfg, sharded=False, main=True)
        state = stage_of(cfg).apply(full).state_dict()
        del full
    with parameters_on_meta():
        model, processor = build_run(cfg, load_weights=False)
    return model, processor, state


def build_trained(
    cfg: DictConfig, weights: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[LMM, SampleProcessor]:
    """The configured model (no pretrained weights read) with a trained weights file loaded, in
    eval mode. Each part keeps its configured dtype; with `dtype`, the model is built on the meta
    device and the tensors are read straight to `device` and cast to `dtype` (no second copy)."""
    if dtype is None:
        state = read_weights(weights, recorded_sha256(weights))
        model, processor = build_run(cfg, load_weights=False)
        model.load_state_dict(state)
        return model.eval().to(device), processor
    state = read_weights(weights, recorded_sha256(weights), device=str(device))
    with parameters_on_meta():
        model, processor = build_run(cfg, load_weights=False)
    model.load_state_dict(state, assign=True)
    return model.to(device, dtype=dtype).eval(), processor


def model_config(cfg: DictConfig) -> dict:
    """What builds the model and its inputs (MODEL_KEYS, the template, max length, image decoding), resolved."""
    image = OmegaConf.select(cfg, "data.image", default=None)
    config = {
        **{key: container(OmegaConf.select(cfg, key, default=None)) for key in MODEL_KEYS},
        "template": cfg.stage.template,
        "max_length": cfg.data.max_length,
        "image": container(image),
    }
    if isinstance(config["llm"], dict):
        config["llm"].pop("finetune_lr", None)  # a training setting kept beside the LLM, not part of it
    return config


def container(node) -> dict | None:
    """A config node as plain data, resolved (None where a config has no such node)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def model_drift(trained: DictConfig, today: DictConfig) -> list[str]:
    """`key: trained -> today` for each model setting the two configs build differently."""
    from lmm.run.directory import differences

    return [] if trained is today else differences(model_config(trained), model_config(today))


def say_drift(run_dir: Path, trained: DictConfig, today: DictConfig, action: str) -> None:
    """One line when today's config would build another model than the run trained (the trained one is used)."""
    drift = model_drift(trained, today)
    if drift:
        print(
            f"[lmm] today's config would build another model than {run_dir} trained ({'; '.join(drift[:6])}"
            f"{'; ...' if len(drift) > 6 else ''}); {action} the model as trained"
        )


def run_config(run_dir: Path, fallback: DictConfig) -> DictConfig:
    """The config the run was trained with (Hydra saves it), else the command's; relative data
    paths resolve as in this command."""
    cfg = load_saved_config(run_dir)
    if cfg is None:
        return fallback
    cfg.paths = fallback.paths
    return cfg


def load_for_command(path: str | Path, device: str | torch.device = "cpu") -> tuple[LMM, SampleProcessor]:
    """load_pretrained for a command line: what stops it (a missing file, a config that names code,
    a bad value) ends the command in one line."""
    try:
        return load_pretrained(path, device)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise SystemExit(f"[lmm] cannot load {path}: {type(e).__name__}: {e}") from None


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> tuple[LMM, SampleProcessor]:
    """(model, processor) from an `export.format=lmm` directory or a finished run directory; no Hydra app needed."""
    path = Path(path)
    if (path / LMM_CONFIG).exists():
        cfg = OmegaConf.load(path / LMM_CONFIG)
        check_config(OmegaConf.to_container(cfg, resolve=False), str(path / LMM_CONFIG))  # data, never code
        cfg = OmegaConf.create(upgrade_config(OmegaConf.to_container(cfg, resolve=False)))
        cfg.llm.tokenizer = str(path / cfg.llm.tokenizer)
        weights = path / LMM_WEIGHTS
    elif saved_config_path(path).exists() and (path / FINAL_WEIGHTS).exists():
        cfg, weights = load_saved_config(path), path / FINAL_WEIGHTS
    else:
        raise FileNotFoundError(
            f"{path} is neither an lmm export ({LMM_CONFIG} + {LMM_WEIGHTS}) nor a finished run "
            f"(.hydra/config.yaml + {FINAL_WEIGHTS})"
        )
    return build_trained(cfg, weights, device)
