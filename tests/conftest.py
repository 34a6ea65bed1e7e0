"""Shared fixtures: one small synthetic mixture per session, and config composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lmm.core.config import register_resolvers
from lmm.data.synthetic import GenerationConfig, generate

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = GenerationConfig(seed=0, pretrain=96, train=240, val=24, test=48, shard_size=60)

register_resolvers()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A small synthetic mixture with its tokenizer; `paths.data` for composed configs."""
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", SMALL)
    return root


@pytest.fixture(scope="session")
def mix665k_root(data_root) -> Path:
    """`data_root` plus the converted mix665k miniature (text-only ShareGPT entries, multi-turn
    conversations) at shards/llava_mix665k, where data=llava_mix665k looks for it."""
    from lmm.data.convert import convert
    from lmm.data.miniature import build_mix665k

    out = data_root / "shards" / "llava_mix665k"
    if not (out / "manifest.json").exists():
        json_path, images, _, _ = build_mix665k(data_root / "mix665k_source")
        convert(json_path, images, out, workers=1, shard_size=2, progress=False)
    return data_root


@pytest.fixture(scope="session")
def multi_image_root(mix665k_root) -> Path:
    """`mix665k_root` plus the multi-image miniature (mix665k and LLaVA-NeXT-style image lists)
    converted at shards/multi_image_mix, its lists as the `multi_image` source (MULTI_IMAGE_DATA)."""
    from lmm.data.convert import convert
    from lmm.data.miniature import build_multi_image

    out = mix665k_root / "shards" / "multi_image_mix"
    if not (out / "manifest.json").exists():
        json_path, images = build_multi_image(mix665k_root / "multi_image_source")
        convert(json_path, images, out, workers=1, shard_size=2, progress=False)
    return mix665k_root


# data=llava_mix665k on the multi-image miniature: text-only, one-image and multi-image samples.
MULTI_IMAGE_DATA = ["data.root=${paths.data}/shards/multi_image_mix", "+data.sources.multi_image.weight=4"]


@pytest.fixture(scope="session")
def tokenizer(data_root):
    from lmm.data.tokenizer import load_tokenizer

    return load_tokenizer(str(data_root / "synthetic" / "tokenizer"))


def compose_config(overrides: list[str] = (), data_root: Path | None = None, run_dir: Path | None = None) -> DictConfig:
    """Compose conf/ as `python run.py OVERRIDES` would, with test paths."""
    extra = [f"run_dir={run_dir or '/nonexistent-run-dir'}"]
    if data_root is not None:
        extra += [f"paths.data={data_root}", f"paths.runs={data_root / 'runs'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra])


@pytest.fixture
def make_config(data_root, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), data_root, run_dir or tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def llama_tokenizer_dirs(tmp_path_factory) -> dict[bool, Path]:
    """A real SentencePiece Llama tokenizer as LLaVA checkpoints ship it, `legacy` true and false."""
    from tests.llama_tokenizer import train_model, write_llama_tokenizer

    root = tmp_path_factory.mktemp("llama_tokenizer")
    model = train_model(root / "spm")
    return {legacy: write_llama_tokenizer(root / f"legacy_{legacy}", model, legacy) for legacy in (True, False)}


@pytest.fixture(scope="session")
def pretrain558k_root(mix665k_root) -> Path:
    """`mix665k_root` plus the converted LCS-558K miniature at shards/llava_pretrain (data=llava_pretrain)."""
    from lmm.data.convert import convert
    from lmm.data.miniature import build_pretrain558k

    out = mix665k_root / "shards" / "llava_pretrain"
    if not (out / "manifest.json").exists():
        json_path, images = build_pretrain558k(mix665k_root / "pretrain558k_source")
        convert(json_path, images, out, workers=1, shard_size=2, progress=False)
    return mix665k_root
