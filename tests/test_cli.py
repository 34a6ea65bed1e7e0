"""The `lmm` command: its subcommands, the former `python -m` names, and a run directory as a plain
argument (lmm.commands.run_dir: its own overrides carried, quoting Hydra accepts)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lmm import cli
from lmm.commands.run_dir import hydra_quoted, task_arguments
from lmm.run.directory import rerun_command as command


def test_any_directory_name_round_trips_through_hydra():
    for path in [
        "/runs/default/connector=mlp,seed=1",
        "/runs/it's here",
        "/runs/a\\b",
        "/runs/a\\'b",
        "/runs/end\\",
        "/runs/${oops}",
        "/r/x=[1,2]",
    ]:
        (override,) = OverridesParser.create().parse_overrides([f"ckpt={hydra_quoted(path)}"])
        assert OmegaConf.create({"ckpt": override.value()}).ckpt == path, path  # as the composed config holds it


def test_the_run_s_overrides_are_carried_and_the_command_s_win(tmp_path):
    run = tmp_path / "connector=linear,seed=1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["connector=linear", "seed=1", "force=true", "eval=synthetic"])
    )
    assert task_arguments("eval", run, ["eval=llava15"]) == [
        "connector=linear",
        "seed=1",
        "task=eval",
        f"ckpt={hydra_quoted(str(run))}",
        "eval=llava15",
    ]
    assert task_arguments("export", tmp_path, []) == [
        "task=export",
        f"ckpt={hydra_quoted(str(tmp_path))}",
    ]  # an lmm directory
    assert command("eval", run) == f"lmm eval {run}"  # = and , need no quoting in a shell
    assert command("eval", tmp_path / "my run") == f"lmm eval '{tmp_path / 'my run'}'"


def test_lmm_help_lists_every_subcommand_and_each_names_a_runnable_module(capsys):
    cli.main(["--help"])
    listed = capsys.readouterr().out
    for name, (module, _) in cli.SUBCOMMANDS.items():
        assert f"  {name} " in listed, name
        if module != "run.py":
            assert callable(importlib.import_module(module).main), module
    from lmm.bench import BENCHMARKS

    for name in BENCHMARKS:
        assert callable(importlib.import_module(f"lmm.bench.{name.replace('-', '_')}").main), name


def test_an_unknown_subcommand_is_one_line():
    with pytest.raises(SystemExit, match=r"^lmm: no subcommand 'trian'; one of: train, eval"):
        cli.main(["trian"])
    with pytest.raises(SystemExit, match=r"^usage: lmm bench NAME"):
        cli.main(["bench", "nope"])


def test_subcommands_pass_their_arguments_to_the_module(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["ablate", "--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: lmm ablate")
    with pytest.raises(SystemExit, match="not a directory; lmm eval takes a run directory"):
        cli.main(["eval", str(tmp_path / "missing")])


FORMER = {
    "ablate": "ablate",
    "chat": "chat",
    "predict": "predict",
    "export": "export",
    "convert_llava": "convert-llava",
    "pretrain_tiny": "pretrain-tiny",
    "gpu_check": "gpu-check",
    "checkpoint": "consolidate",
}


def test_the_former_python_m_names_still_run_their_subcommand():
    """`python -m lmm.ablate` & co. (the names before `lmm`): each file forwards to its subcommand."""
    src = Path(cli.__file__).parent
    for module, subcommand in FORMER.items():
        text = (src / f"{module}.py").read_text()
        assert subcommand in cli.SUBCOMMANDS and f"lmm {subcommand}" in text, module
    done = subprocess.run([sys.executable, "-m", "lmm.ablate", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: lmm ablate"), done.stderr[-2000:]


def test_lmm_train_outside_a_checkout_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RUN_PY", tmp_path / "run.py")
    with pytest.raises(SystemExit, match=r"^lmm train: no .*run.py; lmm runs from its checkout"):
        cli.main(["train", "task=describe"])
