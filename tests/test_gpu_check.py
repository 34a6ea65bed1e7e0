"""make gpu-check's training parts run as written, here on 2 CPU processes: the two-stage recipe on
the mix665k miniature (text-only steps) and LoRA under FSDP, trained, merged and evaluated."""

import json

import pytest


@pytest.mark.slow
def test_gpu_check_training_parts_pass_on_cpu(tmp_path, capsys):
    from lmm.gpu_check import main

    assert main(["--cpu", "--out", str(tmp_path / "check.json")]) == 0, capsys.readouterr().out
    parts = json.loads((tmp_path / "check.json").read_text())["parts"]
    assert set(parts) == {"fsdp_recipe", "lora_fsdp"} and all(part["passed"] for part in parts.values())
    assert "vqa/exact_match=None" not in parts["fsdp_recipe"]["detail"]  # the finetune run was evaluated
    out = capsys.readouterr().out
    assert "PASS fsdp_recipe" in out and "PASS lora_fsdp" in out
