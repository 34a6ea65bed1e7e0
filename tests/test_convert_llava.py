"""Official LLaVA-1.5 checkpoints (schema-exact tiny ones built here) import into lmm exactly."""

import json
import shutil

import pytest
import torch

import lmm
from lmm.build.factory import build_run
from lmm.eval.evaluate import evaluate_run
from lmm.interop.convert_llava import main as convert_main
from tests.conftest import compose_config


def llava_checkpoint(model, data_root, root, pretrain_only=False):
    """The layout haotian-liu/LLaVA writes: config.json (llava_llama), weights, tokenizer; the tower apart."""
    tower = root / "clip-tower"
    model.vision.model.save_pretrained(tower)
    ckpt = root / ("llava-pretrain" if pretrain_only else "llava-v1.5-tiny")
    ckpt.mkdir()
    config = model.llm.config.to_dict() | {
        "model_type": "llava_llama",
        "architectures": ["LlavaLlamaForCausalLM"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_tower": str(tower),
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_hidden_size": model.vision.hidden_size,
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "tokenizer_model_max_length": 512,
    }
    projector = {f"model.mm_projector.{k}": v.clone() for k, v in model.connector.mlp.state_dict().items()}
    if pretrain_only:
        base = root / "vicuna-base"
        model.llm.save_pretrained(base)
        config["_name_or_path"] = str(base)
        torch.save(projector, ckpt / "mm_projector.bin")
    else:
        torch.save(
            {**{k: v.clone() for k, v in model.llm.state_dict().items()}, **projector}, ckpt / "pytorch_model.bin"
        )
    (ckpt / "config.json").write_text(json.dumps(config))
    for file in (data_root / "synthetic" / "tokenizer").iterdir():
        shutil.copy(file, ckpt / file.name)
    return ckpt


@pytest.mark.parametrize("pretrain_only", [False, True])
def test_import_reproduces_the_model(data_root, tmp_path, pretrain_only):
    cfg = compose_config([], data_root)
    torch.manual_seed(3)
    model, processor = build_run(cfg)
    ckpt = llava_checkpoint(model.eval(), data_root, tmp_path, pretrain_only)
    convert_main([str(ckpt), "--out", str(tmp_path / "imported")])
    loaded, loaded_processor = lmm.load_pretrained(tmp_path / "imported")
    assert loaded_processor.template == ("plain" if pretrain_only else "vicuna_v1")
    ids = torch.tensor([[1, *[4] * model.num_image_tokens, 20, 21, 22]])
    pixels = torch.randn(1, 3, model.vision.image_size, model.vision.image_size)
    with torch.no_grad():
        assert torch.equal(
            model(ids, torch.ones_like(ids), pixels).logits, loaded(ids, torch.ones_like(ids), pixels).logits
        )
    if not pretrain_only:  # the imported model is scored in lmm's harness as it is
        eval_cfg = compose_config(
            ["task=eval", f"ckpt={tmp_path / 'imported'}", "eval.benchmarks.synthetic.limit=8"],
            data_root,
            tmp_path / "scores",
        )
        (tmp_path / "scores").mkdir()
        assert "synthetic/vqa/exact_match" in evaluate_run(eval_cfg)["metrics"]


def test_unknown_architecture_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral", "hidden_size": 8}))
    with pytest.raises(SystemExit, match="model_type='mistral' is not an official LLaVA checkpoint"):
        convert_main([str(tmp_path)])


def test_llava_next_checkpoint_is_refused_not_read_as_pad(tmp_path):
    config = {
        "model_type": "llava_llama",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "image_aspect_ratio": "anyres_max_9",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SystemExit,
        match="image_aspect_ratio='anyres_max_9' is not LLaVA-1.5's.*LLaVA-NeXT checkpoints are not imported",
    ):
        convert_main([str(tmp_path)])


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end=True is not something lmm can honour"),
        (
            {"mm_patch_merge_type": "spatial_unpad"},
            "mm_patch_merge_type='spatial_unpad' is not something lmm can honour",
        ),
        ({"mystery_scaling": 3}, r"settings lmm does not know: \['mystery_scaling'\]"),
    ],
)
def test_settings_lmm_cannot_honour_are_refused_not_dropped(tmp_path, setting, message):
    config = {
        "model_type": "llava_llama",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "image_aspect_ratio": "pad",
        **setting,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=message):
        convert_main([str(tmp_path)])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        convert_main(["--help"])
    out = capsys.readouterr().out
    for option in ("path", "--out", "--vision-tower", "--base-llm"):
        assert option in out
    assert "mm_vision_tower" in out and "_name_or_path" in out


def test_a_tuned_tower_in_the_checkpoint_is_used(data_root, tmp_path):
    """unfreeze_mm_vision_tower runs save the tower under model.vision_tower.vision_tower.*: those weights win."""
    cfg = compose_config([], data_root)
    torch.manual_seed(3)
    model, _ = build_run(cfg)
    ckpt = llava_checkpoint(model.eval(), data_root, tmp_path)
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    tuned = {f"model.vision_tower.vision_tower.{k}": v + 0.5 for k, v in model.vision.model.state_dict().items()}
    torch.save({**state, **tuned}, ckpt / "pytorch_model.bin")
    convert_main([str(ckpt), "--out", str(tmp_path / "imported")])
    loaded, _ = lmm.load_pretrained(tmp_path / "imported")
    for key, value in loaded.vision.model.state_dict().items():
        assert torch.equal(value, tuned[f"model.vision_tower.vision_tower.{key}"])


def test_weights_of_another_shape_are_refused_in_one_line(data_root, tmp_path):
    cfg = compose_config([], data_root)
    model, _ = build_run(cfg)
    ckpt = llava_checkpoint(model.eval(), data_root, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2  # config.json no longer describes the weights
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SystemExit,
        match=r"^\[lmm\] cannot convert .*: weights do not fit config.json: size mismatch for llm\.model\.layers",
    ):
        convert_main([str(ckpt), "--out", str(tmp_path / "imported")])
