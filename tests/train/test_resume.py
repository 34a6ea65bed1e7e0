"""A run killed with SIGKILL at a random moment and re-run ends exactly like an uninterrupted one."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmm
from lmm.interop.export import export
from lmm.train.checkpoint import is_complete
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]


def command(data_root: Path, runs: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "run.py",
        f"name={name}",
        f"paths.data={data_root}",
        f"paths.runs={runs}",
        "trainer.max_steps=30",
        "checkpoint_every=5",
        "trainer.val_check_interval=15",
        "eval.benchmarks.synthetic.limit=24",
        "trainer.enable_progress_bar=false",
    ]


def run_dir(runs: Path, name: str) -> Path:
    (found,) = [p for p in (runs / name).iterdir() if p.is_dir()]
    return found


@pytest.mark.slow
def test_sigkill_and_rerun_equals_uninterrupted(data_root, tmp_path):
    runs = tmp_path / "runs"
    # The uninterrupted run goes side by side with the one that is killed (2 cores; they share nothing).
    straight_log = tmp_path / "straight.log"  # a file, not a pipe: nothing reads it until the end
    straight = subprocess.Popen(
        command(data_root, runs, "straight"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=straight_log.open("w")
    )
    killed = subprocess.Popen(
        command(data_root, runs, "killed"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((runs / "killed").glob("*/checkpoints/last.ckpt")):
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))  # somewhere after the first checkpoint
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed; raise max_steps"
    directory = run_dir(runs, "killed")
    assert not (directory / "final.safetensors").exists()
    assert straight.wait(timeout=300) == 0, straight_log.read_text()[-3000:]

    again = subprocess.run(command(data_root, runs, "killed"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    assert is_complete(directory / "checkpoints" / "last.ckpt")

    expected, resumed = (json.loads((d / "results.json").read_text()) for d in (run_dir(runs, "straight"), directory))
    assert resumed["metrics"] == expected["metrics"]
    assert resumed["cost"]["tokens_seen"] == expected["cost"]["tokens_seen"]  # totals survive the restart
    a, b = (load_file(str(d / "final.safetensors")) for d in (run_dir(runs, "straight"), directory))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # A third run of the same command reports the finished run and does nothing.
    done = subprocess.run(command(data_root, runs, "killed"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "already finished" in done.stdout

    # The run directory is usable as it is: loaded without Hydra, and exported (its saved config).
    model, _ = lmm.load_pretrained(directory)
    assert all(torch.equal(model.state_dict()[k], b[k]) for k in b)
    exported = export(compose_config(["task=export", f"ckpt='{directory}'", "export.format=hf"], data_root))
    assert (exported / "config.json").exists() and (exported / "model.safetensors").exists()


def test_resume_restores_every_random_state(data_root, tmp_path):
    """With dropout (LoRA's), a run stopped at a checkpoint and resumed takes exactly the steps of
    an uninterrupted run: checkpoints carry each rank's RNG state, applied at the first batch."""
    import lightning as L
    from hydra.utils import instantiate

    from lmm.build.factory import build_for_stage
    from lmm.build.stage import Optim, stage_of
    from lmm.train.checkpoint import AtomicCheckpoint
    from lmm.train.module import LMMModule

    cfg = compose_config(["stage=lora", "stage.lora.r=4", "stage.lora.alpha=8", "stage.lora.dropout=0.3"], data_root)

    class Record(L.Callback):
        def __init__(self, stop_at=None):
            self.losses, self.stop_at = [], stop_at

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))
            self.seen = module.skips.seen_total
            if trainer.global_step == self.stop_at:
                trainer.should_stop = True

    def fit(record, checkpoint_dir=None, resume=None):
        model, processor, _ = build_for_stage(cfg, sharded=False, main=True)
        module = LMMModule(model, dataclasses.replace(stage_of(cfg), optim=Optim(lr=1e-3)))
        data = instantiate(cfg.data, seed=0, num_workers=0, batch_size=4)
        data.attach(processor, processor.tokenizer.pad_token_id)
        callbacks = [record] + (
            [AtomicCheckpoint(dirpath=checkpoint_dir, save_last=True, every_n_train_steps=3, save_top_k=0)]
            if checkpoint_dir
            else []
        )
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=6,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=callbacks,
            enable_checkpointing=bool(checkpoint_dir),
        )
        trainer.fit(module, datamodule=data, ckpt_path=resume)

    straight, first, second = Record(), Record(stop_at=3), Record()
    fit(straight)
    fit(first, tmp_path / "ckpt")
    fit(second, resume=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(straight.losses) == 6 and first.losses + second.losses == straight.losses
    assert second.seen == straight.seen == 6 * 4  # "samples seen" is the whole run's, across the resume


class Payload:
    """Something `weights_only` refuses to unpickle."""


@pytest.mark.slow
def test_a_damaged_last_checkpoint_is_never_silently_ignored(make_config, tmp_path, capsys):
    """An unreadable last.ckpt: the run resumes from the previous complete checkpoint (one line),
    or, with none, stops in one line saying how to start over; never a silent restart at step 0
    and never a last-v1.ckpt beside it."""
    import shutil

    from lmm.run.directory import set_status
    from lmm.train.checkpoint import resume_point
    from lmm.train.train import train

    quick = [
        "vision=tiny",
        "llm=tiny",
        "trainer.max_steps=4",
        "checkpoint_every=2",
        "eval_after_train=false",
        "data.batch_size=4",
        "trainer.limit_val_batches=0",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
    ]
    run = tmp_path / "run"
    train(make_config(*quick, run_dir=run))
    checkpoints = run / "checkpoints"
    good = checkpoints / "last.ckpt"
    set_status(run, "failed")  # as if it had died after its last checkpoint

    shutil.copy(good, checkpoints / "last.ckpt.old")
    good.write_bytes(b"garbage, not a zip archive")
    capsys.readouterr()
    train(make_config(*quick, run_dir=run))
    out = capsys.readouterr().out
    assert (
        "cannot be resumed from (missing, incomplete, or not a checkpoint); resuming from the previous complete" in out
    )
    assert "trained 4 steps" in out and not any(p.name.startswith("last-v") for p in checkpoints.iterdir())
    (checkpoints / "last.ckpt.old").unlink()

    for damage in ("garbage", "payload"):
        set_status(run, "failed")
        if damage == "garbage":
            good.write_bytes(good.read_bytes()[:200])
        else:
            torch.save({"state_dict": {}, "hidden": Payload()}, good)
        with pytest.raises(
            ValueError,
            match=r"last.ckpt cannot be resumed from .* no earlier checkpoint is complete; run the same "
            r"command with force=true",
        ):
            resume_point(checkpoints)
        with pytest.raises(ValueError, match="force=true to start this run over"):
            train(make_config(*quick, run_dir=run))
    train(make_config(*quick, "force=true", run_dir=run))
    assert (
        sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"] and "trained 4 steps" in capsys.readouterr().out
    )


@pytest.mark.slow
def test_a_run_resumes_with_another_layout_of_the_same_global_batch(make_config, tmp_path, capsys):
    """Devices, per-device batch and accumulation are how the global batch is laid out, not the
    run's identity: another layout of the same global batch resumes (said in one line), another
    global batch is refused with the reason; sample totals stay those of the whole run."""
    from lmm.run.directory import RunMismatch, set_status
    from lmm.train.train import train

    common = [
        "vision=tiny",
        "llm=tiny",
        "trainer.max_steps=4",
        "checkpoint_every=2",
        "eval_after_train=false",
        "trainer.limit_val_batches=0",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "stage.global_batch_size=8",
    ]
    run = tmp_path / "run"
    first = train(make_config(*common, "data.batch_size=4", run_dir=run))  # 4 per device × 2 accumulation
    assert first["cost"]["samples_seen"] == 4 * 8
    set_status(run, "failed", layout={"global_batch": 8, "devices": 1, "per_device": 4, "accumulation": 2})
    capsys.readouterr()
    again = train(make_config(*common, "data.batch_size=8", run_dir=run))  # 8 per device × 1 accumulation
    out = capsys.readouterr().out
    assert (
        "resuming on 1 device(s) × 8 per device × 1 accumulation (was 1 × 4 × 2): the global batch of 8 is unchanged"
        in out
    )
    assert again["cost"]["samples_seen"] == 4 * 8  # the run's totals, not this session's, nor twice them
    set_status(run, "failed")
    with pytest.raises(RunMismatch, match=r"global_batch: 8 -> 16"):
        train(make_config(*common[:-1], "stage.global_batch_size=16", "data.batch_size=8", run_dir=run))
