"""logger=: loss, lr, tokens/s, skips and the final scores reach TensorBoard, CSV, MLflow (local
file store) and W&B (offline) at once, with no network."""

import csv

import pytest

from lmm.train.train import train


def test_every_logger_at_once_gets_the_run(make_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: conf/logger/wandb.yaml says offline too
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    cfg = make_config(
        "logger=[tensorboard,csv,mlflow,wandb]",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=4",
        "eval.benchmarks.synthetic.limit=4",
        "data.batch_size=4",
        "data.num_workers=0",
        run_dir=run_dir,
    )
    results = train(cfg)
    wandb.finish()
    wanted = {
        "train/loss",
        "train/lr/connector",
        "train/tokens_per_s",
        "train/skipped_samples",
        "eval/synthetic/vqa/exact_match",
        "cost/tokens_seen",
    }

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert wanted <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/synthetic/vqa/exact_match")[-1].value == pytest.approx(
        results["metrics"]["synthetic/vqa/exact_match"]
    )

    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert wanted <= set(rows[0])
    assert [float(r["eval/synthetic/vqa/exact_match"]) for r in rows if r["eval/synthetic/vqa/exact_match"]] == [
        pytest.approx(results["metrics"]["synthetic/vqa/exact_match"])
    ]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)  # file:<paths.runs>/mlruns
    # lmm's experiment name "default" is MLflow's "Default" experiment (names match without case).
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="attributes.run_name = 'run'"
    )
    (run,) = runs
    assert run.info.run_name == "run" and wanted <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4  # every step

    # W&B 0.2x+ writes offline runs as protobuf records (run-*.wandb) for `wandb sync`, with no
    # Python reader: every metric key must be in the record stream.
    (offline,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = offline.read_bytes()
    assert all(key.encode() in records for key in wanted), [key for key in wanted if key.encode() not in records]


def test_tensorboard_takes_the_run_directory_literally(tmp_path, monkeypatch):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    run_dir = tmp_path / "runs" / "name_$HOME"
    logger = instantiate(compose_config([], run_dir=run_dir).logger.tensorboard)
    assert logger.log_dir.rstrip("/") == str(run_dir / "tb")  # not $HOME expanded
