"""make gpu-check's training parts run as written (the target's own command), here on 2 CPU processes:
the two-stage recipe on the mix665k miniature (text-only steps) and LoRA under FSDP, trained, merged
and evaluated."""

import json

import pytest


@pytest.mark.slow
def test_gpu_check_training_parts_pass_on_cpu(tmp_path, capsys):
    from tests.makefile import run_target

    assert run_target("gpu-check", ARGS=f"--cpu --out {tmp_path / 'check.json'}") == 0, capsys.readouterr().out
    parts = json.loads((tmp_path / "check.json").read_text())["parts"]
    assert set(parts) == {"fsdp_recipe", "lora_fsdp"} and all(part["passed"] for part in parts.values())
    assert "vqa/exact_match=None" not in parts["fsdp_recipe"]["detail"]  # the finetune run was evaluated
    out = capsys.readouterr().out
    assert "PASS fsdp_recipe" in out and "PASS lora_fsdp" in out


def test_the_loss_part_reports_the_benchmarks_numbers(tmp_path, monkeypatch):
    """The part's line is made from lmm.bench.loss's result (here run on CPU at a tiny size in place of CUDA)."""
    from lmm.bench import loss
    from lmm.commands import gpu_check

    def tiny(root, name, *args):
        assert (name, args) == ("loss", ("--device", "cuda"))
        return loss.main(
            [
                "--tokens",
                "64",
                "--batch",
                "1",
                "--hidden",
                "32",
                "--vocab-override",
                "3000",
                "--repeats",
                "1",
                "--out",
                str(root / "loss.json"),
            ]
        )

    monkeypatch.setattr(gpu_check, "benchmark", tiny)
    line = gpu_check.loss(tmp_path, 1)
    assert line.startswith("qwen2: peak ") and "; vicuna: peak " in line and "time fused/plain" in line
