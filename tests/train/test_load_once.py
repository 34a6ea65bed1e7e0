"""Under FSDP the model is read once: rank 0 reads the weights and broadcasts them after
sharding, so no other rank ever holds the whole model in host memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from lmm.build.factory import build_run
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_only_rank_zero_holds_the_full_model(data_root, tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    torch.manual_seed(1)
    model, _ = build_run(compose_config(["vision=tiny", "llm=medium"], data_root))
    save_model(model, str(saved / "final.safetensors"))  # the checkpoint the run starts from (stage.init_from)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "run.py",
        "vision=tiny",
        "llm=medium",
        "strategy=fsdp",
        "trainer.devices=2",
        "trainer.max_steps=1",
        "eval=none",
        "data.batch_size=2",
        "trainer.limit_val_batches=0",
        f"stage.init_from={saved}",
        f"paths.data={data_root}",
        f"paths.runs={runs}",
        "trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"initialised connector, vision, llm from {saved / 'final.safetensors'}" in done.stdout
    (run_dir,) = [p for p in (runs / "default").iterdir() if p.is_dir()]
    rank0, rank1 = json.loads((run_dir / "results.json").read_text())["cost"]["model_load_host_bytes"]
    print(
        f"full model {full_bytes / 2**20:.1f} MiB; host memory added by the model load: rank 0 "
        f"{rank0 / 2**20:.1f} MiB, rank 1 {rank1 / 2**20:.1f} MiB"
    )
    assert rank0 >= full_bytes  # rank 0 read the whole model
    assert rank1 < full_bytes  # rank 1 never held it
