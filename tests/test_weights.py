"""Real model ids with no local weights fail fast, saying where lmm looked; nothing is downloaded."""

import json
import time

import pytest

from lmm.core.weights import WeightsNotFoundError, resolve_weights
from lmm.train.train import train


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("LMM_WEIGHTS", str(tmp_path / "weights"))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights("lmsys/vicuna-13b-v1.5", "LLM weights")
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "lmsys/vicuna-13b-v1.5" in message and "LMM_WEIGHTS" in message and "Hugging Face cache" in message
    assert "hf download" in message
    assert (
        "llm.model.pretrained=" in message and "vision.pretrained=" in message
    )  # keys that exist (not llm.pretrained)


def test_local_directory_wins(tmp_path, monkeypatch):
    (tmp_path / "weights" / "org" / "model").mkdir(parents=True)
    monkeypatch.setenv("LMM_WEIGHTS", str(tmp_path / "weights"))
    assert resolve_weights("org/model") == tmp_path / "weights" / "org" / "model"
    assert resolve_weights(str(tmp_path)) == tmp_path


def test_train_with_real_llm_fails_before_any_work(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("LMM_WEIGHTS", str(tmp_path / "weights"))
    cfg = make_config("llm=vicuna7b", "vision=clip_l14_336")
    with pytest.raises(WeightsNotFoundError, match="openai/clip-vit-large-patch14-336"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "run.json",
        "run.lock",
        "status.json",
    ]  # no work, only the record
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"
