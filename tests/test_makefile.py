"""Every Makefile target runs in some test, as its own command line (`make -n`), at a tiny size where
it can; a refactor cannot break a target unseen."""

import subprocess

import pytest

from tests.conftest import compose_config
from tests.makefile import ROOT, composable_overrides, lmm_commands, run_target, target_commands, targets

# target -> where it runs. "here": below. A test name: that test runs the target's own command.
COVERED = {
    "help": "here",
    "install": "CI: .ci/run's make lint and make test install first",
    "install-lmms-eval": "CI: make test installs it",
    "lint": "here",
    "format": "here (dry run: it rewrites files)",
    "test": "CI: .ci/run",
    "test-fast": "here (dry run: the suite it runs is make test's)",
    "data": "here",
    "pretrain-tiny": "tests/test_pretrain_tiny.py",
    "demo": "here (composed) and tests/test_end_to_end.py (trained at a few steps)",
    "convert": "here",
    "table": "here",
    "describe": "here",
    "simulate": "here (composed) and tests/test_simulate.py",
    "scale-out": "here (composed) and tests/test_simulate.py",
    "ablate": "here (composed) and tests/test_end_to_end.py (every connector trains)",
    "table2": "here (composed) and tests/test_ablate.py (the spec names every row)",
    "ablate-anyres": "here (composed) and tests/test_ablate.py",
    "design-space": "here (composed, every design) and tests/model/test_token_budget.py, tests/eval/test_blind.py",
    "ablate-multi-image": "here (composed) and tests/test_ablate.py",
    "gpu-check": "tests/test_gpu_check.py",
    "bench": "here (it is the bench-* targets, each run by tests/test_bench.py)",
    "lock": "here (dry run: it rewrites requirements.lock)",
    "clean-runs": "here (dry run: it deletes experiments/runs)",
    **{target: "tests/test_bench.py" for target in targets() if target.startswith("bench-") and target != "bench-mfu"},
    "bench-mfu": "tests/test_bench.py (its --smoke size on CPU)",
}


def test_every_target_has_a_test_that_runs_it():
    assert sorted(targets()) == sorted(COVERED)
    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [t for t in targets() if f"make {t}" not in listed and t != "help"] == []


def test_lint_passes_as_make_lint_runs_it():
    ruff = [command for command in target_commands("lint") if command[0].endswith("ruff")]
    assert len(ruff) == 2
    for command in ruff:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:]


def test_dry_run_targets_name_the_commands_they_should():
    assert {tuple(c[1:3]) for c in target_commands("format") if c[0].endswith("ruff")} == {
        ("check", "--fix"),
        ("format", "."),
    }
    assert any("pytest" in c and "not slow" in " ".join(c) for c in target_commands("test-fast"))
    assert "freeze" in str(target_commands("lock"))
    assert target_commands("clean-runs") == [["rm", "-rf", "experiments/runs"]]
    assert [c[0] for c in lmm_commands("bench")] == ["bench"] * 7  # every CPU benchmark, mfu (GPU) apart


@pytest.mark.parametrize(
    "target",
    [
        "demo",
        "describe",
        "simulate",
        "scale-out",
        "ablate",
        "table2",
        "ablate-anyres",
        "ablate-multi-image",
        "design-space",
    ],
)
def test_training_targets_compose(target, data_root):
    """Each `lmm train` command of a target composes (its experiments, sweeps and keys exist); what
    it trains is trained at a few steps by the tests COVERED names."""
    commands = [c for c in lmm_commands(target) if c[0] == "train"]
    assert commands, target
    for command in commands:
        cfg = compose_config(composable_overrides(command[1:]), data_root)
        assert cfg.task in ("train", "describe", "simulate")


def test_describe_target_runs(capsys):
    from lmm.commands.tasks import run_task

    (command,) = lmm_commands("describe")
    table = run_task(compose_config(composable_overrides(command[1:])))
    assert table["visual_tokens"] == 576 and "llm" in capsys.readouterr().out


def test_data_target_generates_a_mixture(tmp_path):
    """`make data`'s command, at a tiny size in a temporary folder."""
    out = tmp_path / "synthetic"
    run_target("data", DATA_DIR=str(out), ARGS="--pretrain 8 --train 16 --val 4 --test 4 --shard-size 8")
    assert (out / "manifest.json").exists() and (out / "tokenizer").is_dir()


def test_convert_target_converts_the_miniature(tmp_path, monkeypatch):
    from lmm.data.miniature import build_mix665k

    json_path, images, _, _ = build_mix665k(tmp_path / "mini")
    monkeypatch.chdir(tmp_path)  # the target writes data/shards/NAME under the working directory
    manifest = run_target("convert", JSON=str(json_path), IMAGES=str(images), NAME="mini")
    assert manifest is None and (tmp_path / "data" / "shards" / "mini" / "manifest.json").exists()


def test_table_target_writes_the_table(tmp_path):
    from tests.test_ablate import sweep

    root = sweep(tmp_path)
    table = run_target("table", SWEEP=str(root))
    assert table.rows and (root / "ablation.md").exists()


def test_usage_errors_of_targets_with_arguments():
    for target in ("convert", "table"):
        # -o: leave the install stamp alone (CI installed already; a usage error needs no install)
        done = subprocess.run(
            ["make", "-s", "-o", ".venv/.installed", target], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and "usage: make" in done.stdout, target
