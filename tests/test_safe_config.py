"""Configs read back from disk are data: a `_target_` that is not one of lmm's classes, a resolver
that builds config at resolve time, or `trust_remote_code` switched on is refused in one line at
every entry point that reads one (lmm directories, run directories, replayed overrides, LLaVA
checkpoints), nested at any depth, and nothing of the payload runs."""

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import lmm
from lmm.core.safe_config import UntrustedConfig, allowed_targets, check_config, check_overrides
from tests.conftest import CONF, compose_config

SRC = Path(__file__).resolve().parents[1] / "src" / "lmm"


def payload(marker: Path) -> dict:
    """Creates `marker` if anything builds it (open(file, "w"))."""
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


def nest_at_depth(config: dict, marker: Path) -> dict:
    """The payload three levels down, inside a list: connector.extra.deep[1].payload."""
    config["connector"]["extra"] = {"deep": [1, {"payload": payload(marker)}]}
    return config


def test_every_shipped_config_passes():
    """No false alarm: every experiment as composed from conf/ is accepted."""
    experiments = sorted(
        p.relative_to(CONF / "experiment").with_suffix("").as_posix() for p in (CONF / "experiment").rglob("*.yaml")
    )
    assert len(experiments) > 10
    for name in experiments:
        cfg = compose_config([f"experiment={name}"])
        check_config(OmegaConf.to_container(cfg, resolve=False), name)
    assert "lmm.model.connectors.MLPConnector" in allowed_targets() and "builtins.open" not in allowed_targets()


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"a": {"b": [0, {"_target_": "os.system"}]}},
            r"a\.b\[1\]\._target_='os\.system' is not one of lmm's own classes",
        ),
        ({"llm": {"model": {"trust_remote_code": True}}}, "may not turn on remote code"),
        ({"x": "${oc.decode:'{_target_: os.system}'}"}, "calls the resolver 'oc.decode'"),
        ({"x": ["${oc.env:HOME}"]}, "calls the resolver 'oc.env'"),
    ],
)
def test_check_config_refuses_at_any_depth(bad, message):
    with pytest.raises(UntrustedConfig, match=message):
        check_config(bad, "f.yaml")


@pytest.mark.parametrize(
    "override",
    [
        "+connector.extra._target_=builtins.open",
        "connector={_target_:builtins.open,file:x}",
        "+x=[1,{_target_:builtins.open}]",
        "llm.model.trust_remote_code=true",
        "name=${oc.env:HOME}",
    ],
)
def test_saved_overrides_are_checked(override):
    with pytest.raises(UntrustedConfig):
        check_overrides(["connector=mlp", override], "overrides.yaml")
    check_overrides(
        ["connector=mlp", "seed=1", "~eval", "data.sources=[a,b]", "stage.init_from=${paths.runs}/${run_id:x}"], "ok"
    )


@pytest.fixture(scope="module")
def lmm_dir(data_root, tmp_path_factory):
    from lmm.build.factory import build_run
    from lmm.interop.export import save_lmm

    cfg = compose_config(["vision=tiny", "llm=tiny"], data_root)
    model, processor = build_run(cfg)
    out = tmp_path_factory.mktemp("lmm_dir") / "model"
    save_lmm(model, processor, cfg, out)
    return out


def poisoned_lmm_dir(lmm_dir: Path, tmp_path: Path, marker: Path) -> Path:
    import shutil

    out = tmp_path / "poisoned"
    shutil.copytree(lmm_dir, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump(nest_at_depth(config, marker)))
    return out


def test_lmm_directory_entry_points_refuse(lmm_dir, tmp_path, capsys):
    from lmm.commands.chat import main as chat
    from lmm.commands.predict import main as predict
    from lmm.interop.lmms_eval_model import LmmModel as LmmsEvalModel

    marker = tmp_path / "pwned"
    poisoned = poisoned_lmm_dir(lmm_dir, tmp_path, marker)
    with pytest.raises(UntrustedConfig, match=r"connector\.extra\.deep\[1\]\.payload\._target_='builtins\.open'"):
        lmm.load_pretrained(poisoned)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Hi?"}) + "\n")
    for run in (
        lambda: predict([str(poisoned), "--input", str(questions), "--output", str(tmp_path / "a.jsonl")]),
        lambda: chat([str(poisoned)]),
    ):
        with pytest.raises(SystemExit, match=r"^\[lmm\] cannot load .*UntrustedConfig: .*builtins\.open.*\(refused\)$"):
            run()
    with pytest.raises(
        SystemExit, match=r"^\[lmm\] lmms-eval --model lmm: UntrustedConfig: "
    ):  # lmms-eval would exit 0 on an Exception
        LmmsEvalModel(pretrained=str(poisoned))
    from lmm.eval.evaluate import evaluate_run

    with pytest.raises(UntrustedConfig):
        evaluate_run(compose_config(["task=eval", f"ckpt={poisoned}"], run_dir=tmp_path / "scores"))
    assert not marker.exists()


def finished_run(tmp_path: Path, marker: Path, where: str) -> Path:
    """A finished run directory whose saved config, overrides or hydra.yaml holds the payload."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    config = OmegaConf.to_container(compose_config(["vision=tiny", "llm=tiny"]), resolve=False)
    overrides = ["vision=tiny", "llm=tiny"]
    hydra = {"hydra": {"runtime": {"output_dir": str(run_dir)}, "job": {"override_dirname": "llm=tiny,vision=tiny"}}}
    if where == "config":
        nest_at_depth(config, marker)
    elif where == "overrides":
        overrides.append(f"+connector.extra=[1,{{_target_:builtins.open,file:{marker},mode:w}}]")
    else:
        hydra["hydra"]["runtime"]["output_dir"] = {"x": [payload(marker)]}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (run_dir / "final.safetensors").write_bytes(b"")
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": {}}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


@pytest.mark.parametrize("where", ["config", "hydra"])
def test_run_directory_entry_points_refuse(tmp_path, where):
    from lmm.commands.consolidate import main as consolidate
    from lmm.interop.export import export

    marker = tmp_path / "pwned"
    run_dir = finished_run(tmp_path, marker, where)
    with pytest.raises(UntrustedConfig, match="builtins.open"):
        lmm.load_pretrained(run_dir)
    with pytest.raises(SystemExit, match=r"^\[lmm\] cannot consolidate .*UntrustedConfig: .*\(refused\)$"):
        consolidate([str(run_dir)])
    with pytest.raises(UntrustedConfig):
        export(compose_config(["task=export", f"ckpt={run_dir}"]))
    assert not marker.exists()


def test_replayed_overrides_refuse_before_anything_runs(tmp_path):
    from lmm.commands.run_dir import main as cli

    marker = tmp_path / "pwned"
    run_dir = finished_run(tmp_path, marker, "overrides")
    for task in ("eval", "export"):
        with pytest.raises(
            SystemExit, match=r"^\[lmm\] UntrustedConfig: .*overrides\.yaml: connector\.extra\[1\]\._target_="
        ):
            cli(task, [str(run_dir)])
    assert not marker.exists()


@pytest.mark.parametrize(
    "setting",
    [
        {"rope_scaling": {"_target_": "builtins.open", "file": "x"}},
        {"mm_projector_lr": {"deep": [{"_target_": "builtins.open"}]}},
        {"rope_scaling": {"type": "linear", "factor": {"nested": 2}}},
    ],
)
def test_converter_refuses_a_checkpoint_config_that_is_not_plain_data(tmp_path, setting):
    from lmm.interop.convert_llava import main as convert

    config = {
        "model_type": "llava_llama",
        "mm_vision_tower": "x",
        "image_aspect_ratio": "pad",
        "hidden_size": 8,
        **setting,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"cannot convert .*(not one of lmm's own classes|not a plain setting)"):
        convert([str(tmp_path)])


# Functions that read a YAML/JSON config and may skip the check, each with why.
READS_ONLY_TRUSTED = {
    "core.config.known_top_level_keys": "conf/ (the repository's own)",
    "core.config.run_name_excluded_keys": "conf/",
    "core.safe_config.allowed_targets": "conf/",
    "commands.pretrain_tiny.tower_arch": "conf/",
    "commands.pretrain_tiny.llm_arch": "conf/",
    "commands.pretrain_tiny.contrastive_training": "conf/",
    "commands.pretrain_tiny.pretrain_tiny": "conf/",
    "analysis.ablate.load": "a table spec: names and orders, never built",
    "analysis.ablate.find_runs": "overrides as table labels, never built",
    "run.directory.saved_overrides": "returns strings; the callers that replay them check them "
    "(commands.run_dir.task_arguments)",
    "data.tokenizer.save_tokenizer": "re-reads the tokenizer_config.json it has just written, to add `legacy`",
}
CHECKS = {"check_config", "check_overrides", "check_settings", "check_tower_settings"}


def test_every_config_reader_checks_what_it_reads():
    """A function that loads a config file (OmegaConf.load, yaml.safe_load, a checkpoint's
    config.json) or replays saved overrides also calls a check, unless it reads conf/ alone."""
    readers = {"load", "safe_load", "saved_overrides"}
    unchecked = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            calls = {
                c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
                for c in ast.walk(node)
                if isinstance(c, ast.Call)
            }
            text = ast.unparse(node)
            reads = (
                calls & readers and ("OmegaConf.load" in text or "yaml.safe_load" in text or "saved_overrides(" in text)
            ) or ("json.loads" in text and "config.json" in text)
            if reads and not calls & CHECKS and f"{module}.{node.name}" not in READS_ONLY_TRUSTED:
                unchecked.append(f"{module}.{node.name}")
    assert unchecked == []
