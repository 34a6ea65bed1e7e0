"""lmm.cli: a run directory as a plain argument, its own overrides carried, quoting Hydra accepts."""

import yaml
from omegaconf import OmegaConf
from hydra.core.override_parser.overrides_parser import OverridesParser

from lmm.cli import command, hydra_quoted, task_arguments


def test_any_directory_name_round_trips_through_hydra():
    for path in ["/runs/default/connector=mlp,seed=1", "/runs/it's here", "/runs/a\\b", "/runs/a\\'b", "/runs/end\\", "/runs/${oops}", "/r/x=[1,2]"]:
        (override,) = OverridesParser.create().parse_overrides([f"ckpt={hydra_quoted(path)}"])
        assert OmegaConf.create({"ckpt": override.value()}).ckpt == path, path  # as the composed config holds it


def test_the_run_s_overrides_are_carried_and_the_command_s_win(tmp_path):
    run = tmp_path / "connector=linear,seed=1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["connector=linear", "seed=1", "force=true", "eval=synthetic"]))
    assert task_arguments("eval", run, ["eval=llava15"]) == [
        "connector=linear", "seed=1", "task=eval", f"ckpt={hydra_quoted(str(run))}", "eval=llava15"]
    assert task_arguments("export", tmp_path, []) == ["task=export", f"ckpt={hydra_quoted(str(tmp_path))}"]  # an lmm directory
    assert command("eval", run) == f"python -m lmm.eval {run}"  # = and , need no quoting in a shell
    assert command("eval", tmp_path / "my run") == f"python -m lmm.eval '{tmp_path / 'my run'}'"
