"""Every config option composes; bad options fail with Hydra's list; describe counts are exact."""

import functools

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmm.analysis.describe import describe
from lmm.build.model import build_connector, build_tower
from lmm.build.stage import stage_of
from tests.conftest import CONF, compose_config

GROUPS = ["vision", "connector", "llm", "data", "stage", "trainer", "strategy", "eval", "experiment"]


def options(group: str) -> list[str]:
    """Every option of a group, nested ones as `sub/name` (e.g. data=table2/3_format_prompt);
    `_base` files hold what a group's options share and are not options themselves."""
    paths = (CONF / group).rglob("*.yaml")
    return sorted(p.relative_to(CONF / group).with_suffix("").as_posix() for p in paths if not p.name.startswith("_"))


def targets(node, path: str = "") -> dict[str, object]:
    """The outermost `_target_` nodes of a config, by their dotted path."""
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            return {path: node}
        return {k: v for key in node for k, v in targets(node._get_node(key), f"{path}.{key}".lstrip(".")).items()}
    return {}


def instantiate_target(cfg, path: str, node):
    """Build one configured object as lmm does: towers and LLMs on the meta device without
    weights, the connector between the configured widths, the trainer on this machine's CPU."""
    if path in ("vision", "llm.model"):
        return meta_node(path, OmegaConf.to_yaml(node, resolve=True))
    if path == "connector":
        vision = meta_node("vision", OmegaConf.to_yaml(cfg.vision, resolve=True))
        llm = meta_node("llm.model", OmegaConf.to_yaml(cfg.llm.model, resolve=True))
        with torch.device("meta"):
            return build_connector(node, vision.hidden_size, llm.config.hidden_size)[0]
    if path == "data":
        return instantiate(node, seed=0)
    if path == "stage":
        return stage_of(cfg)
    if path == "trainer":
        return instantiate(node, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    return instantiate(node)


@functools.cache
def meta_node(path: str, yaml_text: str):
    with torch.device("meta"):
        node = OmegaConf.create(yaml_text)
        return build_tower(node, load_weights=False) if path == "vision" else instantiate(node, load_weights=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_instantiates(group, option):
    """Every `_target_` the option's composed config holds is built (a misspelled class path or
    keyword anywhere fails here, not hours into a job)."""
    cfg = compose_config([f"{group}={option}"])
    if group == "experiment":
        assert cfg.name == option  # every experiment names its runs
    found = targets(cfg)
    assert {"vision", "llm.model", "connector", "data", "stage", "trainer", "strategy"} <= set(found)
    for path, node in found.items():
        assert instantiate_target(cfg, path, node) is not None, path


def test_a_misspelled_target_fails_the_instantiation_check():
    cfg = compose_config(["eval=llava15"])
    cfg.eval.benchmarks.gqa._target_ = "lmm.eval.official.GQAA"
    with pytest.raises(Exception, match="GQAA"):
        instantiate_target(cfg, "eval.benchmarks.gqa", cfg.eval.benchmarks.gqa)
    cfg = compose_config(["strategy=ddp", "strategy._target_=lightning.pytorch.strategies.DDPStrategi"])
    with pytest.raises(Exception, match="DDPStrategi"):
        instantiate_target(cfg, "strategy", cfg.strategy)
    cfg = compose_config(["+data.shuffle_bufer=10"])  # a misspelled keyword
    with pytest.raises(Exception, match="shuffle_bufer"):
        instantiate_target(cfg, "data", cfg.data)


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


@functools.cache
def meta_component(group: str, option: str):
    cfg = compose_config([f"{group}={option}"])
    with torch.device("meta"):
        return (
            build_tower(cfg.vision, load_weights=False)
            if group == "vision"
            else instantiate(cfg.llm.model, load_weights=False)
        )


@functools.cache
def connector_config(option: str):
    return compose_config([f"connector={option}"]).connector  # composed once per option, built per width pair


@functools.cache
def meta_connector(option: str, vision_dim: int, llm_dim: int):
    with torch.device("meta"):
        return build_connector(connector_config(option), vision_dim, llm_dim)[0]


@functools.cache
def meta_output_shape(option: str, num_patches: int, vision_dim: int, llm_dim: int) -> tuple[int, ...]:
    """A connector's output shape on meta features [2, P, Dv]: a connector sees only these four
    numbers, so each distinct set runs once (many towers and LLMs share widths and patch counts)."""
    module = meta_connector(option, vision_dim, llm_dim)
    return tuple(module(torch.empty(2, num_patches, vision_dim, device="meta")).shape)


@pytest.mark.slow
@pytest.mark.parametrize("vision", options("vision"))
def test_every_vision_connector_llm_combination_on_meta(vision):
    """Every V × C × L builds on the meta device and emits the tokens it reports (identity only
    where the widths agree: it has no projection). Components are built once and shared."""
    tower = meta_component("vision", vision)
    for llm in options("llm"):
        width = meta_component("llm", llm).config.hidden_size
        for connector in options("connector"):
            if connector == "identity" and tower.hidden_size != width:
                with pytest.raises(Exception, match="vision_dim == llm_dim"):
                    meta_connector(connector, tower.hidden_size, width)
                continue
            module = meta_connector(connector, tower.hidden_size, width)
            expected = (2, module.num_tokens(tower.num_patches), width)
            if module.uses_instruction:  # HF's text embeddings need real ids; covered on tiny sizes
                assert expected[1] == module.num_queries
                continue
            shape = meta_output_shape(connector, tower.num_patches, tower.hidden_size, width)
            assert shape == expected, (vision, connector, llm)


def test_describe_runs_through_the_model_builder():
    cfg = compose_config(["task=describe", "vision=dinosiglip_384", "connector=c_abstractor", "llm=qwen2_7b"])
    table = describe(cfg)
    assert table["visual_tokens"] == 144 and table["patches"] == 729


def test_unknown_connector_lists_the_options():
    with pytest.raises(MissingConfigException) as error:
        compose_config(["connector=foo"])
    message = str(error.value)
    for option in options("connector"):
        assert option in message


def test_describe_llava15_13b_counts(capsys):
    cfg = compose_config(["task=describe", "connector=mlp", "llm=vicuna13b", "vision=clip_l14_336"])
    table = describe(cfg)
    assert table["components"]["connector"]["parameters"] == 31_467_520
    assert table["components"]["llm"]["parameters"] == 13_015_864_320
    assert table["components"]["vision"]["parameters"] == 303_507_456
    assert table["components"]["vision"]["trainable"] == 0  # finetune stage: tower frozen
    assert table["visual_tokens"] == 576
    out = capsys.readouterr().out
    assert "31,467,520" in out and "13,015,864,320" in out


def test_describe_pretrain_stage_trains_only_the_connector():
    cfg = compose_config(["task=describe", "llm=vicuna7b", "vision=clip_l14_336", "stage=pretrain"])
    table = describe(cfg)
    assert table["components"]["connector"]["trainable"] == table["components"]["connector"]["parameters"]
    assert table["components"]["llm"]["trainable"] == 0
    assert table["components"]["llm"]["parameters"] == 6_738_415_616


def test_run_dir_is_derived_from_overrides():
    from lmm.core.config import run_id

    assert run_id("") == "default"
    assert run_id("connector=mlp,seed=1") == "connector=mlp,seed=1"
    assert "/" not in run_id("stage.init_from=experiments/runs/x")
    long = run_id("a=" + "x" * 300)
    assert len(long) <= 120 and long == run_id("a=" + "x" * 300) and long != run_id("a=" + "x" * 299)


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_sweeps_compose_with_valid_options(sweep):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={sweep}", "run_dir=/x"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.get("seed", "0,1,2") == "0,1,2"  # ablations run 3 seeds (the Table 2 rows: one each)
    for key, values in params.items():
        values = {v.strip() for v in values.split(",")}
        if "." in key:  # a value (connector.tokens=16,64): every one composes onto an existing key
            for value in values:
                assert str(OmegaConf.select(compose_config([f"{key}={value}"]), key)) == value, key
        elif key != "seed":
            assert values <= set(options(key)), key


def test_describe_llava15_recipe_stages(capsys):
    overrides = ["task=describe", "trainer.devices=8"]
    table = describe(compose_config(["experiment=llava15_13b", *overrides]), overrides=overrides)
    pretrain, finetune = table["stages"]["llava15_13b_pretrain"], table["stages"]["llava15_13b"]
    assert pretrain["trainable"] == {"vision": 0, "connector": 31_467_520, "llm": 0}
    assert finetune["trainable"] == {"vision": 0, "connector": 31_467_520, "llm": 13_015_864_320}
    assert (pretrain["global_batch"], pretrain["accumulation"], finetune["global_batch"], finetune["accumulation"]) == (
        256,
        1,
        128,
        1,
    )
    memory = finetune["memory_per_gpu_bytes"]
    # fp32 master shards of the 13.05B trained parameters, the frozen tower in bf16, over 8 GPUs;
    # AdamW moments twice the trainable shard.
    assert memory["parameters (sharded)"] == pytest.approx(
        (13_047_331_840 * 4 + (13_350_839_296 - 13_047_331_840) * 2) / 8
    )
    assert memory["AdamW moments (sharded)"] == pytest.approx(2 * 13_047_331_840 * 4 / 8)
    # No accumulation at 8 GPUs: the gradients are not live at the forward's peak.
    forward = memory["activations"] + memory["loss"]
    backward = memory["gradients (sharded)"] + memory["backward working set"]
    assert memory["total"] == pytest.approx(
        memory["parameters (sharded)"]
        + memory["AdamW moments (sharded)"]
        + memory["gathered units (×2 prefetch)"]
        + max(forward, backward)
    )
    # model.loss=fused (the default) holds no [tokens, V] logits: a chunk, the hidden states' and the head's gradients.
    assert memory["loss"] < 2 * 4 * 2048 * 16 * 32_000 / 4
    out = capsys.readouterr().out
    assert "gradient-accumulation" in out and "FSDP memory per GPU" in out
    one_gpu = describe(
        compose_config(["experiment=llava15_7b", "task=describe", "trainer.devices=1"]), overrides=["trainer.devices=1"]
    )
    assert (
        one_gpu["stages"]["llava15_7b_pretrain"]["accumulation"] == 8
        and one_gpu["stages"]["llava15_7b"]["accumulation"] == 8
    )


def test_describe_refuses_an_indivisible_global_batch():
    with pytest.raises(ValueError, match="not a multiple of data.batch_size=32 × 3 device"):
        describe(compose_config(["experiment=llava15_7b", "trainer.devices=3"]), overrides=["trainer.devices=3"])


def test_lora_stage_trains_adapters_and_the_connector():
    table = describe(compose_config(["task=describe", "stage=lora", "llm=vicuna7b", "vision=clip_l14_336"]))
    llm = table["components"]["llm"]
    # r=128 adapters on q,k,v,o,gate,up,down of 32 layers: r·(in+out) per linear layer.
    per_layer = 128 * ((4096 + 4096) * 4 + (4096 + 11008) * 3)
    assert llm["trainable"] == 32 * per_layer
    assert table["components"]["connector"]["trainable"] == table["components"]["connector"]["parameters"]


def test_unknown_top_level_keys_are_refused_with_a_hint():
    """`+conector=mlp` (what Hydra suggests for a misspelt group) must not train the default connector."""
    from lmm.core.config import check_top_level_keys

    with pytest.raises(ValueError, match=r"'conector' \(did you mean 'connector'\?\)"):
        check_top_level_keys(compose_config(["+conector=mlp"]))
    for experiment in sorted(
        p.relative_to(CONF / "experiment").with_suffix("").as_posix() for p in (CONF / "experiment").rglob("*.yaml")
    ):
        check_top_level_keys(compose_config([f"experiment={experiment}"]))  # every shipped experiment passes


def test_cpu_threads_sets_this_process_share_and_refuses_nonsense():
    from lmm.commands.tasks import limit_cpu_threads

    before = torch.get_num_threads()
    try:
        limit_cpu_threads(1)
        assert torch.get_num_threads() == 1
        limit_cpu_threads(None)  # null: torch's own choice stands
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for wrong in (0, -2, 1.5):
        with pytest.raises(ValueError, match=rf"cpu_threads={wrong}"):
            limit_cpu_threads(wrong)


def test_make_table2_runs_side_by_side_without_changing_run_directories():
    """make table2's command line: joblib's launcher, 2 jobs of 1 thread; threads and workers
    are resources, not part of what a run is, so they stay out of its directory name."""
    from hydra import compose, initialize_config_dir

    overrides = [
        "+sweep=table2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "cpu_threads=1",
        "data.num_workers=0",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "run_dir=/x"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    assert cfg.cpu_threads == 1 and cfg.data.num_workers == 0
    assert {"cpu_threads", "data.num_workers"} <= set(cfg.hydra.job.config.override_dirname.exclude_keys)


def test_the_finetune_learning_rate_follows_the_llm_size():
    """`python run.py` (tiny pretrained parts, a fresh connector) finetunes at 1e-3, which beats the
    trivial baseline on every metric in its 400 steps (README); real LLMs keep LLaVA's 2e-5."""
    assert compose_config([]).stage.optim.lr == 1.0e-3
    assert compose_config(["llm=small"]).stage.optim.lr == 1.0e-3
    assert compose_config(["llm=vicuna13b"]).stage.optim.lr == 2.0e-5
    assert compose_config(["experiment=llava15_7b"]).stage.optim.lr == 2.0e-5
    assert compose_config(["stage=pretrain"]).stage.optim.lr == 1.0e-3
