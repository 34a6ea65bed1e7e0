"""Sweeps through a real SLURM: a 2-job sweep via sbatch; a job requeued mid-training resumes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm import cluster

pytestmark = pytest.mark.slow  # a real SLURM cluster: make test runs it, make test-fast does not

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm():
    cluster.start()
    yield
    cluster.stop()


def common(data_root: Path, runs: Path) -> list[str]:
    return [
        f"paths.data={data_root}",
        f"paths.runs={runs}",
        "trainer.max_steps=20",
        "checkpoint_every=5",
        "trainer.val_check_interval=10",
        "eval.benchmarks.synthetic.limit=24",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
    ]


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


@pytest.mark.slow
def test_sweep_through_sbatch_with_a_requeued_job(slurm, data_root, tmp_path):
    runs = tmp_path / "runs"
    # The same run without SLURM and without interruption, side by side (the sweep mostly waits on SLURM).
    reference_log = tmp_path / "reference.log"  # a file, not a pipe: nothing reads it until the end
    reference = subprocess.Popen(
        [sys.executable, "run.py", "connector=mlp", *common(data_root, tmp_path / "reference")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=reference_log.open("w"),
    )
    sweep = subprocess.Popen(
        [sys.executable, "run.py", "-m", "hydra/launcher=slurm", "connector=linear,mlp", *common(data_root, runs)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("default/*connector=mlp*/checkpoints/last.ckpt")):
        assert sweep.poll() is None, sweep.stdout.read()[-3000:]
        time.sleep(0.1)
    (mlp,) = runs.glob("default/*connector=mlp*")
    assert (mlp / "slurm_jobs.txt").exists(), "no checkpoint from the mlp job within 5 minutes"
    job_id = (mlp / "slurm_jobs.txt").read_text().split()[0]
    cluster.sh("scontrol", "requeue", job_id)
    cluster.release_when_requeued(job_id)
    output, _ = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, output[-4000:]

    jobs = (mlp / "slurm_jobs.txt").read_text().splitlines()
    assert jobs == [f"{job_id} restart=0", f"{job_id} restart=1"]  # the same job, started twice
    (linear,) = runs.glob("default/*connector=linear*")
    assert (linear / "results.json").exists() and (linear / "slurm_jobs.txt").read_text().count("restart=0") == 1
    logs = [p.read_text() for p in (runs / "default" / ".submitit").glob("*/*_log.out")]
    assert sum(f"resuming from {mlp}" in log for log in logs) == 1

    # It ends with the same metrics as the run that was requeued.
    assert reference.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
    assert final_metrics(mlp) == final_metrics(tmp_path / "reference" / "default" / mlp.name)


def queued() -> set[str]:
    """The job ids SLURM holds now (a finished sweep's jobs may still be exiting)."""
    return set(cluster.sh("squeue", "-h", "-o", "%i").stdout.split())


def test_unknown_slurm_option_fails_before_submitting(slurm, data_root, tmp_path):
    before = queued()
    done = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partitionn=gpu",
            *common(data_root, tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "partitionn" in done.stderr
    assert queued() <= before  # nothing was submitted


def test_a_refused_submission_is_one_line(slurm, data_root, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=no_such_partition",
            *common(data_root, tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "[lmm] SLURM refused the submission: " in done.stderr, done.stderr[-2000:]
    assert "partition" in done.stderr.lower() and "Traceback" not in done.stderr


@pytest.mark.slow
def test_local_launcher_runs_the_same_sweep(data_root, tmp_path):
    """hydra/launcher=local: the sweep's runs as local submitit processes, side by side, same run directories."""
    runs = tmp_path / "runs"
    overrides = [
        f"paths.data={data_root}",
        f"paths.runs={runs}",
        "trainer.max_steps=4",
        "eval.benchmarks.synthetic.limit=8",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(
        [sys.executable, "run.py", "-m", "hydra/launcher=local", "connector=linear,mlp", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    finished = sorted(p.parent.name for p in runs.glob("default/*/results.json"))
    assert (
        len(finished) == 2
        and any("connector=linear" in n for n in finished)
        and any("connector=mlp" in n for n in finished)
    )
