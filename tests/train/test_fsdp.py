"""FSDP2 on CPU (gloo, 2 processes): the same losses as one process, sharded resume, consolidation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from lmm.build.factory import build_run
from lmm.commands.consolidate import consolidate
from lmm.eval.evaluate import evaluate_run
from lmm.train.checkpoint import is_complete, resume_point, unreadable
from tests.conftest import compose_config
from tests.train import fsdp_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(data_root, tmp_path_factory):
    """Starting weights and 2 × 6 micro-batches of 4 samples from the real training stream."""
    workdir = tmp_path_factory.mktemp("fsdp")
    cfg = compose_config(["vision=tiny", "llm=tiny"], data_root)  # random init: a few steps visibly learn
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(workdir / "init.safetensors"))
    data = instantiate(cfg.data, seed=0, batch_size=4, num_workers=0)
    data.attach(processor, processor.tokenizer.pad_token_id)
    stream = iter(data.train_dataloader())
    torch.save([next(stream) for _ in range(2 * fsdp_worker.STEPS)], workdir / "batches.pt")
    os.environ["LMM_TEST_IMAGE_TOKEN"] = str(model.image_token_id)
    return workdir


@pytest.mark.slow
def test_fsdp_matches_one_process_resumes_and_consolidates(workdir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMM_TEST_IMAGE_TOKEN": os.environ["LMM_TEST_IMAGE_TOKEN"]}
    done = subprocess.run(
        [sys.executable, "-m", "tests.train.fsdp_worker", str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reference = fsdp_worker.single_process(workdir)
    ranks = [json.loads((workdir / f"losses_rank{r}.json").read_text()) for r in (0, 1)]
    sharded = [(a + b) / 2 for a, b in zip(*ranks, strict=True)]
    assert len(sharded) == len(reference) == fsdp_worker.STEPS
    # Steps 1-3 before the sharded checkpoint, 4-6 after resuming from it.
    assert sharded == pytest.approx(reference, rel=1e-4, abs=1e-5)
    assert reference[-1] < reference[0]  # it learns
    # The simulation of the same config on a fake world of 2 allocates what the real ranks did.
    from lmm.analysis.simulate.fake_step import simulate_step

    real = json.loads((workdir / "state_bytes_rank0.json").read_text())
    cfg = compose_config(["strategy=fsdp", "strategy.param_dtype=float32", "strategy.reduce_dtype=float32"])
    simulated = simulate_step(
        cfg,
        world=2,
        per_device_batch=4,
        sample_lengths=[int(cfg.data.max_length)],
        activation_checkpointing=False,
        accumulating=False,
    )
    assert real["parameters"] > 0 and real["gradients"] > 0 and real["optimizer"] > 2 * real["gradients"]
    assert (simulated.parameters, simulated.gradients, simulated.optimizer) == (
        real["parameters"],
        real["gradients"],
        real["optimizer"],
    )
    last = workdir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and is_complete(last) and not (workdir / "checkpoints" / "last.ckpt.partial").exists()
    assert unreadable(last) is None
    damaged = workdir / "damaged" / "last.ckpt"
    shutil.copytree(last, damaged)
    shard = sorted(damaged.glob("*.distcp"))[-1]
    shard.write_bytes(shard.read_bytes()[:10])
    assert (
        unreadable(damaged)
        == f"shard file {shard.name} has 10 bytes, its metadata needs {(last / shard.name).stat().st_size}"
    )
    shard.unlink()
    assert unreadable(damaged) == f"shard file {shard.name} is missing"
    with pytest.raises(
        ValueError, match=f"cannot be resumed from \\(shard file {shard.name} is missing\\).*force=true"
    ):
        resume_point(damaged.parent)
    merged = load_file(str(consolidate(workdir)))  # no run config here: the trained parameters alone
    final = load_file(str(workdir / "final.safetensors"))
    assert merged.keys() == {k for k in final if not k.startswith("vision.")}  # the stage trains connector + llm
    assert all(torch.equal(merged[k], final[k]) for k in merged)


@pytest.mark.slow
def test_run_py_under_fsdp_end_to_end(data_root, tmp_path):
    """The real command: data stream, sharded checkpoints, gathered final weights, evaluation on rank 0."""
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "run.py",
        "strategy=fsdp",
        "trainer.devices=2",
        "strategy.param_dtype=float32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",  # validation on both ranks: as many batches each (FSDP all-gathers)
        "checkpoint_every=2",
        "stage.global_batch_size=16",
        "data.batch_size=4",
        "eval.benchmarks.synthetic.limit=16",
        "eval.blind=true",  # the blind pass too, on both ranks (the same collectives as the first)
        f"paths.data={data_root}",
        f"paths.runs={runs}",
        "trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "global batch 16 = 4 per device × 2 device(s) × 2 accumulation" in done.stdout
    # A clean log (lmm.core.console): each Lightning line once, no litlogger tip, no known-harmless warnings.
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("INFO: ")]
    assert lines and len(lines) == len(set(lines)), lines
    assert all(
        text not in done.stdout + done.stderr for text in ("litlogger", "returned a view tensor", "LeafSpec", "`srun`")
    )
    (run_dir,) = [p for p in (runs / "default").iterdir() if p.is_dir()]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["cost"]["devices"] == 2 and results["cost"]["samples_seen"] == 4 * 16
    assert "synthetic/vqa/exact_match" in results["metrics"]
    assert "synthetic.blind/vqa/exact_match" in results["metrics"]
    assert (run_dir / "predictions" / "synthetic.blind.jsonl").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()
    merged, final = load_file(str(consolidate(run_dir))), load_file(str(run_dir / "final.safetensors"))
    assert merged.keys() == final.keys() and all(torch.equal(merged[k], final[k]) for k in final)
    # Two ranks split the questions and gathered the answers: the scores equal one process's.
    cfg = compose_config(
        ["task=eval", f"ckpt='{run_dir}'", "eval.benchmarks.synthetic.limit=16", "eval.blind=true"],
        data_root,
        tmp_path / "eval",
    )
    (tmp_path / "eval").mkdir()
    assert evaluate_run(cfg)["metrics"] == results["metrics"]
    # The re-score command the run printed works pasted into a shell, from another directory.
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("[lmm] re-score: ")]
    pasted = line.removeprefix("[lmm] re-score: ") + f" paths.runs={tmp_path / 'rescored'}"
    again = subprocess.run(
        pasted,
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # an active venv
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    (rescored,) = (tmp_path / "rescored").glob("*/*/results.json")
    assert json.loads(rescored.read_text())["metrics"] == results["metrics"]
