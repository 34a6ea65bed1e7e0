"""The global batch is the invariant: accumulation and steps derive from it, or the run refuses."""

import math

import pytest

from lmm.run.plan import accumulation, batch_plan, world_size
from lmm.train.train import preflight
from tests.conftest import compose_config


def test_accumulation_from_the_global_batch():
    assert accumulation(256, 16, 8) == 2  # LLaVA-1.5 pretrain on 8 GPUs with 16 per device
    assert accumulation(128, 16, 8) == 1
    assert accumulation(128, 4, 1) == 32
    assert accumulation(None, 16, 8, configured=3) == 3
    with pytest.raises(ValueError, match="not a multiple of data.batch_size=16 × 3 device"):
        accumulation(128, 16, 3)
    with pytest.raises(ValueError, match="contradicts stage.global_batch_size=128"):
        accumulation(128, 16, 2, configured=2)


def test_world_size_from_devices_and_nodes():
    assert world_size(compose_config(["trainer.devices=4", "trainer.num_nodes=2"]).trainer) == 8
    assert world_size(compose_config(["trainer.devices=[0,1]"]).trainer) == 2
    assert world_size(compose_config(["trainer.devices=auto"]).trainer) == 1  # cpu


def test_epochs_become_steps(data_root):
    cfg = compose_config(["stage.global_batch_size=32", "stage.epochs=2", "data.batch_size=8"], data_root)
    plan = batch_plan(cfg)
    assert plan.epoch_samples == 240  # the SMALL mixture's train split
    assert (plan.accumulation, plan.global_batch, plan.max_steps) == (4, 32, math.ceil(2 * 240 / 32))


def test_epochs_without_a_manifest_fail_before_work(tmp_path):
    cfg = compose_config(["stage.epochs=1", "eval=none", f"paths.data={tmp_path}"])
    with pytest.raises(ValueError, match="size of .* is unknown"):
        preflight(cfg)


def test_indivisible_global_batch_fails_in_preflight(data_root):
    cfg = compose_config(["stage.global_batch_size=100", "data.batch_size=16"], data_root)
    with pytest.raises(ValueError, match="global_batch_size=100 is not a multiple"):
        preflight(cfg)


def test_slurm_tasks_must_match_the_devices(monkeypatch):
    from lmm.train.slurm import check_slurm_tasks

    for key, value in {
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NAME": "train",
        "SLURM_NODELIST": "n1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS_PER_NODE": "4",
    }.items():
        monkeypatch.setenv(key, value)
    check_slurm_tasks(compose_config(["trainer.devices=4"]).trainer)
    with pytest.raises(ValueError, match="SLURM started 4 task.* trainer.devices × trainer.num_nodes = 2"):
        check_slurm_tasks(compose_config(["trainer.devices=2"]).trainer)


def test_a_benchmark_on_the_mixture_about_to_be_generated_passes_preflight(tmp_path):
    # make table2's first run: the synthetic mixture and its test split do not exist yet.
    cfg = compose_config([f"paths.data={tmp_path}", f"eval.benchmarks.synthetic.root={tmp_path}/synthetic"])
    preflight(cfg)
    assert not (tmp_path / "synthetic").exists()  # checked, not generated
    elsewhere = compose_config([f"paths.data={tmp_path}", f"eval.benchmarks.synthetic.root={tmp_path}/other"])
    with pytest.raises(FileNotFoundError, match="eval.benchmarks.synthetic: no .tar shards"):
        preflight(elsewhere)


@pytest.mark.parametrize(
    "override, words",
    [
        ("trainer.devices=0", "trainer.devices=0: give a number of devices >= 1"),
        ("trainer.num_nodes=0", "trainer.num_nodes=0: must be a whole number >= 1"),
    ],
)
def test_a_world_of_no_devices_is_refused_in_one_line(override, words):
    with pytest.raises(ValueError, match=words):
        world_size(compose_config([override]).trainer)
