"""2 gloo processes on the mix665k miniature: every stage under FSDP and DDP trains through
text-only steps, resumes, and takes the same steps as one process; a stop seen by one rank
stops both, with the same message, at once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lmm.build.factory import build_run
from tests.train import distributed_worker as worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(multi_image_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distributed")
    (workdir / "data_root").write_text(str(multi_image_root))
    for name, (_, overrides) in worker.SCENARIOS.items():
        torch.manual_seed(0)
        model, _ = build_run(worker.config(multi_image_root, overrides))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(workdir / f"init_{name}.safetensors"))
    return workdir


def launch(workdir: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.train.distributed_worker", str(workdir), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_every_stage_under_fsdp_and_ddp_equals_one_process(workdir):
    done = launch(workdir, "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for name in worker.SCENARIOS:
        ranks = [json.loads((workdir / f"{name}_rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["images"] == ranks[1]["images"], name  # both ranks: an image step or a text-only step, together
        assert not all(ranks[0]["images"]), f"{name}: no text-only step; the test would not provoke divergence"
        if name in (
            "fsdp_multi_image",
            "fsdp_anyres",
        ):  # some micro-batch holds more images than samples: a multi-image sample
            counts = ranks[0]["image_counts"] + ranks[1]["image_counts"]
            assert any(images > rows for images, rows in counts), counts
        if name == "fsdp_anyres":  # several views per image, and steps where the ranks' tower inputs differ
            views = list(zip(ranks[0]["view_counts"], ranks[1]["view_counts"], strict=True))
            assert any(a != b for a, b in views) and sum(map(sum, views)) > sum(i for i, _ in counts), views
        sharded = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
        expected, images = worker.reference(workdir, name)
        assert images == ranks[0]["images"]
        assert len(sharded) == len(expected) == worker.STEPS
        # Steps 1-3 before the checkpoint, 4-6 after resuming from it.
        assert sharded == pytest.approx(expected, rel=1e-4, abs=1e-5), name
        # The checkpoint holds what trains: fp32 parameters + 2 Adam moments = 12 B per trainable parameter.
        ratio = checkpoint_bytes(workdir / name / "last.ckpt") / (12 * trainable_parameters(workdir, name))
        # Sharded checkpoints add ~2 KB per tensor shard: at this scale that matters only for the tiny LoRA
        # adapters and the partial tower (many small tensors); at 7B it is below 0.1%.
        assert ratio <= (1.1 if name in ("fsdp_finetune", "ddp_finetune", "ddp_lora") else 2.0), (name, ratio)


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def trainable_parameters(workdir: Path, name: str) -> int:
    lit, _ = worker.module(
        Path((workdir / "data_root").read_text()), worker.SCENARIOS[name][1], workdir / f"init_{name}.safetensors"
    )
    return sum(p.numel() for p in lit.parameters() if p.requires_grad)


@pytest.mark.slow
def test_a_stop_on_one_rank_stops_both_with_one_message(workdir):
    done = launch(workdir, "stops")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    expected = {
        "skip_rate": "samples skipped on 2 rank(s)",
        "placeholders": "rank 1: ",
        "non_finite": "non-finite loss on rank(s) [1]",
    }
    for stop, words in expected.items():
        ranks = [json.loads((workdir / f"stop_{stop}_rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["message"] and ranks[0]["message"] == ranks[1]["message"], stop
        assert words in ranks[0]["message"], ranks[0]["message"]
        triggered = ranks[1]["triggered_at"]
        assert all(rank["time"] - triggered < 30 for rank in ranks)
    # A rank whose whole share was skipped is not a stop: it adds a zero-weight step and both ranks go on.
    ranks = [json.loads((workdir / f"stop_all_skipped_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["message"] is None and ranks[1]["message"] is None
    assert len(ranks[0]["losses"]) == len(ranks[1]["losses"]) == worker.STEPS
    assert ranks[1]["losses"][worker.STOP_AT] == 0.0 and ranks[0]["losses"][worker.STOP_AT] > 0
