"""A few-step pretrain -> finetune (init_from) -> eval of the default, in one process."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmm.run.directory import FINAL_WEIGHTS, RESULTS
from lmm.train.train import train

# The random-init tiny parts: these tests follow every component through init_from and resume.
FAST = [
    "vision=tiny",
    "llm=tiny",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "trainer.limit_val_batches=2",
    "data.num_workers=0",
]


@pytest.fixture(scope="module")
def pretrain_run(data_root, tmp_path_factory):
    """A pretraining stage: it scores nothing, so it prints no re-score command."""
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("pretrain")
    cfg = compose_config(["experiment=demo_pretrain", "trainer.max_steps=6", *FAST], data_root, run_dir)
    results = train(cfg)  # pretraining does not evaluate, but reports its cost
    assert results["benchmarks"] == {} and results["cost"]["steps"] == 6 and results["cost"]["tokens_seen"] > 0
    assert results["cost"]["samples_seen"] == 6 * 4  # training samples only: steps × batch (validation is not counted)
    return run_dir


@pytest.mark.slow
def test_pretrain_trains_only_the_connector(pretrain_run, make_config):
    from lmm.build.model import build_model

    saved = load_file(str(pretrain_run / FINAL_WEIGHTS))
    torch.manual_seed(0)
    fresh = build_model(
        make_config("experiment=demo_pretrain", "vision=tiny", "llm=tiny"), image_token_id=4
    ).state_dict()
    changed = {k.split(".")[0] for k, v in saved.items() if not torch.equal(v, fresh[k])}
    assert changed == {"connector"}


@pytest.mark.slow
def test_finetune_from_pretrain_then_eval(pretrain_run, make_config, tmp_path, capsys):
    run_dir = tmp_path / "finetune"
    overrides = [
        "experiment=demo_finetune",
        f"stage.init_from={pretrain_run}",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "checkpoint_every=4",
        "eval.benchmarks.synthetic.limit=8",
        *FAST,
    ]
    results = train(make_config(*overrides, run_dir=run_dir))
    out = capsys.readouterr().out
    assert "initialised connector, vision, llm from" in out
    assert "| vqa/exact_match |" in out
    assert "[lmm] samples seen 32, skipped 0" in out  # 8 steps × 4: the validation batches are not training samples
    on_disk = json.loads((run_dir / RESULTS).read_text())
    assert on_disk["metrics"] == results["metrics"]
    synthetic = results["benchmarks"]["synthetic"]
    assert {"vqa/exact_match", "ocr/exact_match", "region/grounding_acc_iou50", "description/loss"} <= set(
        synthetic["metrics"]
    )
    assert results["metrics"]["synthetic/vqa/exact_match"] == synthetic["metrics"]["vqa/exact_match"]
    assert set(synthetic["baselines"]) >= {"vqa/exact_match", "region/grounding_acc_iou50"}
    assert all(0.0 <= v <= 1.0 for k, v in synthetic["metrics"].items() if k != "description/loss")
    predictions = [json.loads(line) for line in (run_dir / "predictions" / "synthetic.jsonl").read_text().splitlines()]
    assert synthetic["counts"]["vqa/exact_match"] == len([p for p in predictions if p["source"] == "vqa"])
    # Each question's own score, averaging to the metric (what lmm.analysis.ablate resamples).
    for key, value in synthetic["metrics"].items():
        if key != "description/loss":
            scores = [p["score"] for p in predictions if p["metric"] == key]
            assert len(scores) == synthetic["counts"][key] and sum(scores) / len(scores) == pytest.approx(
                value, abs=1e-4
            )
    assert len({(p["id"], p["turn"]) for p in predictions}) == len(predictions)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    saved = load_file(str(run_dir / FINAL_WEIGHTS))
    pre = load_file(str(pretrain_run / FINAL_WEIGHTS))
    vision_keys = [k for k in saved if k.startswith("vision.")]
    assert vision_keys and all(torch.equal(saved[k], pre[k]) for k in vision_keys)  # frozen + handed off

    # The same command again neither retrains nor re-evaluates: it reports the finished run.
    again = train(make_config(*overrides, run_dir=run_dir))
    assert "already finished" in capsys.readouterr().out
    assert again["metrics"] == results["metrics"]

    # force=true redoes it from scratch (same directory: force is not part of the run's identity).
    train(make_config(*overrides, "force=true", run_dir=run_dir))
    out = capsys.readouterr().out
    assert "already finished" not in out and "resuming" not in out and "trained 8 steps" in out

    # An interrupted run (no final weights yet) resumes from its last checkpoint.
    (run_dir / FINAL_WEIGHTS).unlink()
    (run_dir / RESULTS).unlink()
    train(make_config(*overrides, run_dir=run_dir))
    assert "resuming from" in capsys.readouterr().out
    assert (run_dir / RESULTS).exists()


def test_init_from_missing_run_is_clear(make_config, tmp_path):
    cfg = make_config("experiment=demo_finetune", f"stage.init_from={tmp_path / 'nope'}", *FAST)
    with pytest.raises(FileNotFoundError, match="run that stage first"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["connector=linear"], ["connector=qformer", "llm=small"], ["vision=tiny_dinosiglip", "connector=c_abstractor"]],
)
def test_other_components_train_on_the_default(make_config, tmp_path, overrides):
    """connector=linear|mlp|qformer and llm=tiny|small all train on the embedded default (qformer at BLIP-2 size)."""
    run_dir = tmp_path / "run"
    results = train(
        make_config(
            *overrides,
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "eval.benchmarks.synthetic.limit=2",
            *FAST,
            run_dir=run_dir,
        )
    )
    assert (run_dir / FINAL_WEIGHTS).exists() and "synthetic/vqa/exact_match" in results["metrics"]


@pytest.fixture(scope="module")
def converted_llava(tmp_path_factory):
    """The miniature mix665k converted, plus a source of broken samples listed in the manifest."""
    import webdataset as wds

    from lmm.data.convert import convert
    from lmm.data.index import index_root
    from lmm.data.miniature import build_mix665k
    from tests.data.broken_samples import catalogue

    root = tmp_path_factory.mktemp("llava")
    json_path, images, _, _ = build_mix665k(root)
    convert(json_path, images, root / "shards", workers=1, shard_size=4, progress=False)
    (root / "shards" / "broken").mkdir()
    with wds.TarWriter(str(root / "shards" / "broken" / "shard-000000.tar")) as writer:
        for sample, _ in catalogue().values():
            writer.write(sample)
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    manifest["counts"]["broken"] = len(catalogue())
    (root / "shards" / "manifest.json").write_text(json.dumps(manifest))
    index_root(root / "shards")  # as a user who adds a source runs `python -m lmm.data.index ROOT`
    return root / "shards"


@pytest.mark.slow
def test_training_on_converted_llava_data_survives_broken_samples(converted_llava, make_config, tmp_path, capsys):
    overrides = [
        "data=llava_mix665k",
        f"data.root={converted_llava}",
        "+data.sources.broken.weight=0.5",
        "eval_after_train=false",
        "trainer.max_steps=12",
        "data.length_group_size=1",
        *FAST,
    ]
    train(make_config(*overrides, "data.max_skip_rate=1.0", run_dir=tmp_path / "run"))
    out = capsys.readouterr().out
    assert (tmp_path / "run" / FINAL_WEIGHTS).exists()
    summary = next(line for line in out.splitlines() if line.startswith("[lmm] samples seen"))
    assert re.search(r"skipped [1-9]\d* \(.*\bimage \d+", summary), (
        summary
    )  # broken samples were met, counted (by reason), survived

    # The same data with the default 1% limit stops with a clear error instead of training on less.
    with pytest.raises(RuntimeError, match=r"samples skipped .* > data.max_skip_rate=1.0%"):
        train(make_config(*overrides, "data.skip_check_after=8", run_dir=tmp_path / "strict"))


@pytest.mark.slow
def test_resumed_training_sees_the_same_batches(make_config, tmp_path, monkeypatch):
    """Stopping after k steps and resuming gives the same sample order as an uninterrupted run."""
    from lmm.train.module import LMMModule

    seen: list[list[str]] = []
    original = LMMModule.training_step

    def recording(self, batch, batch_idx):
        seen.append([m["key"] for m in batch.meta])
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LMMModule, "training_step", recording)
    common = [
        "eval_after_train=false",
        "checkpoint_every=3",
        "trainer.val_check_interval=100",
        *FAST[:-1],
        "data.num_workers=2",
    ]
    train(make_config(*common, "trainer.max_steps=6", run_dir=tmp_path / "straight"))
    straight, seen[:] = list(seen), []
    train(make_config(*common, "trainer.max_steps=3", run_dir=tmp_path / "stopped"))
    first, seen[:] = list(seen), []
    # As if the 6-step run had been interrupted after step 3: no final weights, not finished, and
    # the 6-step config recorded (the straight run's record: run_dir is not part of a run's identity).
    (tmp_path / "stopped" / FINAL_WEIGHTS).unlink()
    (tmp_path / "stopped" / "status.json").unlink()
    shutil.copy(tmp_path / "straight" / "run.json", tmp_path / "stopped" / "run.json")
    train(make_config(*common, "trainer.max_steps=6", run_dir=tmp_path / "stopped"))
    assert first + seen == straight


@pytest.mark.slow
def test_task_eval_scores_a_finished_run(pretrain_run, make_config, tmp_path, monkeypatch):
    """task=eval scores the run's trained weights (every tensor of final.safetensors), not the
    configured model's fresh init."""
    from lmm.commands.tasks import run_task
    from lmm.eval import evaluate as evaluation

    scored = []
    original = evaluation.evaluate
    monkeypatch.setattr(
        evaluation,
        "evaluate",
        lambda cfg, model, *args, **kw: scored.append(model) or original(cfg, model, *args, **kw),
    )
    results = run_task(
        make_config(
            "task=eval",
            f"ckpt={pretrain_run}",
            "stage=pretrain",
            "eval.benchmarks.synthetic.limit=4",
            run_dir=tmp_path / "eval",
        )
    )
    assert (tmp_path / "eval" / RESULTS).exists() and (tmp_path / "eval" / "predictions" / "synthetic.jsonl").exists()
    assert "synthetic/vqa/exact_match" in results["metrics"]
    (model,) = scored
    trained = load_file(str(pretrain_run / FINAL_WEIGHTS))
    state = model.state_dict()
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in trained)


@pytest.mark.slow
def test_packed_training_follows_padded_training(make_config, tmp_path, monkeypatch):
    """data.packing=true trains on the same samples per step with the same losses as padded
    batches (up to float rounding), and the packed-trained model still evaluates."""
    from lmm.train.module import LMMModule

    steps: list[tuple[list[str], float, int]] = []
    original = LMMModule.training_step

    def recording(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        steps.append(([m["key"] for m in batch.meta], float(loss.detach()), batch.input_ids.numel()))
        return loss

    monkeypatch.setattr(LMMModule, "training_step", recording)
    common = ["trainer.max_steps=4", "trainer.val_check_interval=100", "eval.benchmarks.synthetic.limit=4", *FAST]
    padded_results = train(make_config(*common, run_dir=tmp_path / "padded"))
    padded, steps[:] = list(steps), []
    packed_results = train(make_config(*common, "data.packing=true", run_dir=tmp_path / "packed"))
    assert [keys for keys, _, _ in steps] == [keys for keys, _, _ in padded]
    assert [loss for _, loss, _ in steps] == pytest.approx([loss for _, loss, _ in padded], rel=1e-4)
    assert all(
        packed_cells <= padded_cells for (_, _, packed_cells), (_, _, padded_cells) in zip(steps, padded, strict=True)
    )
    assert packed_results["cost"]["tokens_seen"] == padded_results["cost"]["tokens_seen"]
    assert packed_results["metrics"].keys() == padded_results["metrics"].keys()
    weights = [load_file(tmp_path / name / FINAL_WEIGHTS) for name in ("padded", "packed")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_a_re_score_builds_the_model_as_trained(pretrain_run, make_config, tmp_path, capsys):
    """`python -m lmm.eval RUN_DIR` composes today's defaults; the model is built from the run's own
    saved config instead, and what today's config would build differently is said in one line."""
    import shutil

    from omegaconf import OmegaConf

    from lmm.eval.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(pretrain_run, run)
    (run / ".hydra").mkdir(exist_ok=True)
    trained_cfg = make_config("experiment=demo_pretrain", "trainer.max_steps=6", *FAST, run_dir=run)
    OmegaConf.save(trained_cfg, run / ".hydra" / "config.yaml")
    today = make_config(
        "task=eval",
        f"ckpt={run}",
        "connector=linear",
        "eval.benchmarks.synthetic.limit=4",
        *FAST,
        run_dir=tmp_path / "eval",
    )
    results = evaluate_run(today)
    out = capsys.readouterr().out
    assert (
        "today's config would build another model than" in out
        and "connector._target_: 'lmm.model.connectors.MLPConnector'" in out
    )
    assert "scoring the model as trained" in out and "synthetic/vqa/exact_match" in results["metrics"]


@pytest.mark.slow
def test_damaged_final_weights_are_refused_in_one_line(pretrain_run, make_config, tmp_path):
    """final.safetensors carries its sha256 in status.json: a changed byte, NaNs, or a cut file is
    refused by load_pretrained, task=eval, export and predict, never scored or published."""
    import json
    import shutil

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import lmm
    from lmm.commands.predict import main as predict
    from lmm.core.save import file_sha256
    from lmm.eval.evaluate import evaluate_run
    from lmm.run.directory import read_status, set_status

    run = tmp_path / "run"
    shutil.copytree(pretrain_run, run)
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(
        make_config("experiment=demo_pretrain", "trainer.max_steps=6", *FAST, run_dir=run),
        run / ".hydra" / "config.yaml",
    )
    weights = run / FINAL_WEIGHTS
    assert read_status(run)["final_sha256"] == file_sha256(weights)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # bit rot in a tensor's bytes
    weights.write_bytes(bytes(data))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Hi?"}) + "\n")
    refusals = [
        lambda: lmm.load_pretrained(run),
        lambda: evaluate_run(
            make_config("task=eval", f"ckpt={run}", "stage=pretrain", *FAST, run_dir=tmp_path / "eval")
        ),
    ]
    for refuse in refusals:
        with pytest.raises(ValueError, match="is not the file its run recorded when it finished"):
            refuse()
    with pytest.raises(SystemExit, match=r"^\[lmm\] cannot load .* is not the file its run recorded"):
        predict([str(run), "--input", str(questions), "--output", str(tmp_path / "a.jsonl")])

    state = load_file(str(pretrain_run / FINAL_WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights))
    set_status(
        run, "finished", final_sha256=file_sha256(weights)
    )  # a run that trained into NaNs records them faithfully
    with pytest.raises(ValueError, match=rf"holds NaN or infinite values in 1 tensor\(s\) \(first: {name}\)"):
        lmm.load_pretrained(run)
    weights.write_bytes(weights.read_bytes()[:100])
    set_status(run, "finished")  # no record: the file itself is checked
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        lmm.load_pretrained(run)


@pytest.mark.slow
def test_training_reads_a_data_root_over_http(data_root, make_config, tmp_path, capsys):
    """data.root=http://...: run.py's training plans from the fetched indexes and reads by Range."""
    from tests.http_server import serve

    with serve(data_root / "synthetic") as url:
        train(
            make_config(
                f"data.root={url}", "eval_after_train=false", "trainer.max_steps=2", *FAST, run_dir=tmp_path / "run"
            )
        )
    assert (tmp_path / "run" / FINAL_WEIGHTS).exists()
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[lmm] samples seen"))
    assert summary == "[lmm] samples seen 8, skipped 0", summary
