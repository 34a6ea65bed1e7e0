"""A run directory is exactly its run: one process holds it, its recorded config must match,
and "finished" is one status written last."""

import json
import os
import threading
import time

import pytest

from lmm.core.config import run_id
from lmm.run.directory import FINAL_WEIGHTS, RESULTS, RunDirectoryInUse, RunLock, RunMismatch, finished, read_status
from lmm.train.train import train

QUICK = [
    "trainer.max_steps=2",
    "eval_after_train=false",
    "data.batch_size=4",
    "trainer.limit_val_batches=0",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
]


def test_a_held_run_directory_says_who_holds_it(tmp_path, make_config):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirectoryInUse, match=r'"pid": \d+, "host"'):
            train(make_config(*QUICK, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / FINAL_WEIGHTS).exists()


def test_a_second_process_can_wait_for_the_lock(tmp_path):
    first = RunLock(tmp_path).__enter__()
    threading.Timer(0.5, first.__exit__).start()
    start = time.monotonic()
    with RunLock(tmp_path, wait_s=10):
        assert 0.3 < time.monotonic() - start < 10


def test_same_directory_other_config_is_refused_not_reported_finished(tmp_path, make_config, data_root, capsys):
    run = tmp_path / "run"
    results = train(make_config(*QUICK, run_dir=run))
    out = capsys.readouterr().out  # it scored nothing: it says so, and offers no re-score
    assert (
        "(no benchmark was scored)" in out
        and "[lmm] next: a finetune stage that starts from it" in out
        and "re-score" not in out
    )
    assert finished(run) and read_status(run)["status"] == "finished"
    assert (run / RESULTS).exists() and (run / FINAL_WEIGHTS).exists()
    assert train(make_config(*QUICK, run_dir=run)) == results  # the same command: reported, not redone
    assert "already finished" in capsys.readouterr().out
    # paths.data is not in the directory name (-m paths.data=A,B lands in one directory): B must not get A's results.
    other = tmp_path / "other_data"
    other.symlink_to(data_root)
    with pytest.raises(RunMismatch, match=r"data.root: .* -> .*other_data"):
        train(make_config(*QUICK, f"data.root={other}/synthetic", run_dir=run))
    with pytest.raises(RunMismatch, match=r"stage.optim.lr: 0.001 -> 0.0005"):
        train(make_config(*QUICK, "stage.optim.lr=5e-4", run_dir=run))
    train(make_config(*QUICK, "stage.optim.lr=5e-4", "force=true", run_dir=run))  # force replaces the run
    assert json.loads((run / "run.json").read_text())["config"]["stage"]["optim"]["lr"] == 5e-4


def test_weights_without_the_finished_status_are_not_finished(tmp_path, make_config):
    run = tmp_path / "run"
    train(make_config(*QUICK, run_dir=run))
    (run / "status.json").write_text(
        json.dumps({"status": "running"})
    )  # killed after final.safetensors, before the end
    assert not finished(run)
    from lmm.analysis.ablate import _status

    assert _status(run) == "incomplete"


def test_a_failed_run_says_so(tmp_path, make_config):
    run = tmp_path / "run"
    with pytest.raises(ValueError):
        train(make_config(*QUICK, "stage.template=nonsense", run_dir=run))
    status = read_status(run)
    assert status["status"] == "failed" and "stage.template='nonsense'" in status["error"]


def test_run_ids_never_merge_two_overrides():
    assert run_id("data.root=my data") != run_id("data.root=my_data")
    assert run_id("connector=mlp,seed=1") == "connector=mlp,seed=1"


@pytest.mark.parametrize(
    "override,words",
    [
        ("data.batch_size=0", "data.batch_size=0: must be a number >= 1"),
        ("data.max_skip_rate=5", "data.max_skip_rate=5: must be a fraction"),
        ("trainer.max_steps=0", "trainer.max_steps=0: must be a number >= 1"),
        ("stage.optim.lr=0", "stage.optim.lr=0: must be a number > 0"),
        (
            "llm.model.attn_implementation=flash_attention_2",
            "attn_implementation=flash_attention_2 needs the flash-attn package",
        ),
    ],
)
def test_numbers_out_of_range_stop_before_any_work(tmp_path, make_config, override, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        train(make_config(*QUICK, override, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_benchmark_files_stop_before_training(tmp_path, make_config):
    with pytest.raises(FileNotFoundError, match=r"eval.benchmarks.vqav2: missing benchmark file .*visualqa.org"):
        train(make_config("trainer.max_steps=2", "eval=llava15", "data.num_workers=0", run_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_that_trained_on_nothing_fails(tmp_path, make_config):
    run = tmp_path / "run"
    # 16 tokens cannot hold an image's tokens: every sample is skipped, and 2 steps × 4 stay below skip_check_after.
    with pytest.raises(RuntimeError, match="trained on no tokens"):
        train(make_config(*QUICK, "data.max_length=16", run_dir=run))
    assert not (run / FINAL_WEIGHTS).exists() and not (run / RESULTS).exists()
    assert read_status(run)["status"] == "failed"


@pytest.mark.slow
def test_a_user_error_ends_in_one_line(data_root, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "run.py", "data.batch_size=0", f"paths.data={data_root}"]
    # The plain command and the one with HYDRA_FULL_ERROR=1 side by side, each in its own runs folder.
    plain, full = (
        subprocess.Popen(
            [*cmd, f"paths.runs={tmp_path / name}"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **extra},
        )
        for name, extra in (("plain", {}), ("full", {"HYDRA_FULL_ERROR": "1"}))
    )
    (_, plain_err), (_, full_err) = plain.communicate(timeout=120), full.communicate(timeout=120)
    assert plain.returncode == 1
    assert "[lmm] ValueError: data.batch_size=0: must be a number >= 1" in plain_err
    assert "Traceback" not in plain_err
    log = (tmp_path / "plain" / "default" / "data.batch_size=0" / "run.log").read_text()
    assert "[lmm] ValueError: data.batch_size=0: must be a number >= 1" in log  # the run directory explains itself
    assert "Traceback" in full_err and "data.batch_size=0" in full_err


def test_a_saved_config_resolves_its_hydra_references_outside_hydra(tmp_path):
    """A recipe's stage.init_from names the pretrain run through ${hydra:job.override_dirname};
    read back from the run directory (consolidate, export, load_pretrained) it resolves to what
    it meant when the run started, with no Hydra app around."""
    from omegaconf import OmegaConf

    from lmm.run.directory import load_saved_config

    hydra = tmp_path / "run" / ".hydra"
    hydra.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "paths": {"runs": "/runs"},
                "pretrain_name": "llava15_7b_pretrain",
                "run_dir": "${hydra:runtime.output_dir}",
                "stage": {"init_from": "${paths.runs}/${pretrain_name}/${run_id:${hydra:job.override_dirname}}"},
            }
        ),
        hydra / "config.yaml",
    )
    (hydra / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    output_dir: /runs/llava15_7b/connector=mlp,seed=1\n"
        "  job:\n    name: run\n    override_dirname: connector=mlp,seed=1\n"
        "    log: ${hydra.runtime.output_dir}/${hydra.job.name}.log\n"
    )
    cfg = load_saved_config(tmp_path / "run")
    assert cfg.stage.init_from == "/runs/llava15_7b_pretrain/connector=mlp,seed=1"
    assert cfg.run_dir == "/runs/llava15_7b/connector=mlp,seed=1"
    assert cfg.saved_hydra.job.log == "/runs/llava15_7b/connector=mlp,seed=1/run.log"


def test_saved_overrides_are_read_as_written(tmp_path):
    """An override may hold ${...} text (a path built from paths.runs): it is read back as the
    string it was, never resolved (ablate groups runs by these strings)."""
    import yaml

    from lmm.run.directory import saved_overrides

    (tmp_path / ".hydra").mkdir()
    written = ["stage.init_from=${paths.runs}/pretrain/default", "seed=1"]
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(written))
    assert saved_overrides(tmp_path) == written


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_refused_command_changes_no_byte_of_the_run(data_root, tmp_path):
    """Hydra's own .hydra/ writing is off; lmm writes the saved config, run.log and the lock's
    holder only once the command holds the run and its identity matches."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root, run = Path(__file__).resolve().parents[1], tmp_path / "run"
    base = [
        sys.executable,
        "run.py",
        f"paths.data={data_root}",
        f"paths.runs={tmp_path}",
        f"hydra.run.dir={run}",
        "vision=tiny",
        "llm=tiny",
        *QUICK,
    ]
    done = subprocess.run([*base, "connector=mlp"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["connector"]["_target_"] == "lmm.model.connectors.MLPConnector"
    assert "connector=mlp" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert "runtime" in yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    before = snapshot(run)
    refused = subprocess.run([*base, "connector=linear"], cwd=root, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "[lmm] RunMismatch:" in refused.stderr
    assert snapshot(run) == before


def test_regenerated_data_is_another_run(data_root, tmp_path):
    """A run records its data's manifest fingerprint: the same command on regenerated data is
    refused with the reason (a new name=, or force=true, trains on the new data)."""
    import shutil

    from lmm.data.synthetic import GenerationConfig, MixtureExists, generate
    from tests.conftest import SMALL, compose_config

    data = tmp_path / "data"
    shutil.copytree(data_root / "synthetic", data / "synthetic")
    run = tmp_path / "run"
    make = lambda *extra: compose_config(["vision=tiny", "llm=tiny", *QUICK, *extra], data, run)  # noqa: E731
    train(make())
    other = GenerationConfig(**{**SMALL.__dict__, "seed": 7})
    with pytest.raises(MixtureExists, match=r"made with other options \(seed: 0 -> 7\).*--force"):
        generate(data / "synthetic", other)
    generate(data / "synthetic", other, force=True)
    with pytest.raises(RunMismatch, match=r"was trained on other data: .*manifest.json has changed since"):
        train(make())
    train(make("force=true"))


def test_a_run_recorded_before_its_classes_moved_is_still_the_same_run(tmp_path, make_config):
    """Runs recorded when the Stage lived in lmm.train.stage resume, score and export: the identity and
    the saved config name the old path, which is the same class."""
    import yaml
    from omegaconf import OmegaConf

    from lmm.build.stage import Stage, stage_of
    from lmm.run.directory import IDENTITY, claim_identity, load_saved_config

    run = tmp_path / "run"
    cfg = make_config(*QUICK, run_dir=run)
    claim_identity(run, cfg)
    record = json.loads((run / IDENTITY).read_text())
    record["config"]["stage"]["_target_"] = "lmm.train.stage.Stage"
    (run / IDENTITY).write_text(json.dumps(record))
    claim_identity(run, cfg)  # the same run
    with pytest.raises(RunMismatch, match="different config"):
        claim_identity(run, make_config(*QUICK, "seed=7", run_dir=run))

    saved = run / ".hydra" / "config.yaml"
    saved.parent.mkdir()
    text = OmegaConf.to_container(cfg, resolve=False)
    text["stage"]["_target_"] = "lmm.train.stage.Stage"
    saved.write_text(yaml.safe_dump(text))
    loaded = load_saved_config(run)
    assert loaded.stage._target_ == "lmm.build.stage.Stage" and isinstance(stage_of(loaded), Stage)


def test_a_run_recorded_before_token_budgets_and_blind_controls_is_still_the_same_run(tmp_path, make_config):
    """connector.tokens and eval.blind came later: a run recorded without them is today's run with
    their neutral values (no budget, no blind pass), and a budget makes another run."""
    import yaml
    from omegaconf import OmegaConf

    from lmm.build.factory import model_drift
    from lmm.run.directory import IDENTITY, claim_identity, load_saved_config

    run = tmp_path / "run"
    cfg = make_config(*QUICK, run_dir=run)
    claim_identity(run, cfg)
    record = json.loads((run / IDENTITY).read_text())
    del record["config"]["connector"]["tokens"], record["config"]["eval"]["blind"]
    (run / IDENTITY).write_text(json.dumps(record))
    claim_identity(run, cfg)  # the same run
    with pytest.raises(RunMismatch, match=r"connector.tokens: None -> 16"):
        claim_identity(run, make_config(*QUICK, "connector.tokens=16", run_dir=run))
    saved = run / ".hydra" / "config.yaml"
    saved.parent.mkdir()
    old = OmegaConf.to_container(cfg, resolve=False)
    del old["connector"]["tokens"], old["eval"]["blind"]
    saved.write_text(yaml.safe_dump(old))
    assert model_drift(load_saved_config(run), cfg) == []


def test_a_run_recorded_before_llm_finetune_lr_existed_is_still_the_same_run(tmp_path, make_config):
    """llm.finetune_lr only feeds stage.optim.lr (resolved in the identity): a run recorded without it,
    or with it, is the same run; a different learning rate is another run."""
    from omegaconf import OmegaConf

    from lmm.build.factory import model_drift
    from lmm.run.directory import IDENTITY, claim_identity

    run = tmp_path / "run"
    cfg = make_config(*QUICK, run_dir=run)
    claim_identity(run, cfg)
    record = json.loads((run / IDENTITY).read_text())
    for recorded_lr in ("absent", 1.0e-3):  # before the key existed, and as runs recorded it since
        if recorded_lr == "absent":
            record["config"]["llm"].pop("finetune_lr", None)
        else:
            record["config"]["llm"]["finetune_lr"] = recorded_lr
        (run / IDENTITY).write_text(json.dumps(record))
        claim_identity(run, cfg)  # the same run
    with pytest.raises(RunMismatch, match=r"stage.optim.lr"):
        claim_identity(run, make_config(*QUICK, "llm.finetune_lr=0.5", run_dir=run))
    plain = OmegaConf.to_container(cfg, resolve=True)
    del plain["llm"]["finetune_lr"]
    assert model_drift(OmegaConf.create(plain), cfg) == []
