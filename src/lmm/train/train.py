"""Run one training stage from a composed config: preflight, build, fit, save, evaluate."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from lmm.rundir import IDENTITY, STATUS, RunLock, claim_identity, read_status, set_status
from lmm.save import save_weights
from lmm.data.conversation import TEMPLATE_NAMES
from lmm.data.image import ImageTransform
from lmm.data.sample import SampleProcessor
from lmm.data.shards import list_shards
from lmm.data.tokenizer import load_tokenizer
from lmm.eval.benchmarks import format_table, is_main_process
from lmm.model.build import build_model
from lmm.model.lmm import LMM
from lmm.checkpoint import LAST, AtomicCheckpoint, latest_checkpoint
from lmm.train.agree import AgreedStop
from lmm.train.module import LMMModule, add_lora, merge_lora
from lmm.train.plan import BatchPlan, batch_plan
from lmm.train.materialize import host_memory, parameters_on_meta, reset_peak_host_memory
from lmm.train.strategy import FSDP2Strategy
from lmm.train.slurm import CheckpointBeforeRequeue, check_slurm_tasks, cluster_plugins, in_slurm_job, record_job
from lmm.weights import resolve_weights

FINAL_WEIGHTS = "final.safetensors"
RESULTS = "results.json"


def pretrained_ids(cfg: DictConfig) -> dict[str, str | None]:
    """The weights each pretrained component names (None: random init from its arch)."""
    return {"vision": cfg.vision.get("pretrained"), "llm": cfg.llm.model.get("pretrained")}


# Numeric settings and their smallest sensible value: 0 batch size used to hang, memory growing.
AT_LEAST = {"data.batch_size": 1, "data.max_length": 8, "data.num_workers": 0, "data.shuffle_buffer": 1,
            "data.length_group_size": 1, "data.skip_check_after": 0, "trainer.max_steps": 1, "checkpoint_every": 1,
            "stage.global_batch_size": 1, "stage.epochs": 0, "stage.optim.lr": 0, "stage.optim.weight_decay": 0}
POSITIVE = ("stage.optim.lr", "stage.epochs")  # strictly above their bound


def check_numbers(cfg: DictConfig) -> None:
    """Every numeric setting is a number in its range (a clear error instead of a hang or a crash mid-run)."""
    for key, low in AT_LEAST.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in ("stage.global_batch_size", "stage.epochs"):
            continue  # optional
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (key in POSITIVE and value <= low):
            bound = f"> {low}" if key in POSITIVE else f">= {low}"
            raise ValueError(f"{key}={value!r}: must be a number {bound}")
    rate = OmegaConf.select(cfg, "data.max_skip_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"data.max_skip_rate={rate!r}: must be a fraction between 0 and 1 (0.01 = 1%)")


def check_data(cfg: DictConfig) -> bool:
    """The training (and validation) shards can be listed and every URL checked, unless the
    synthetic mixture will be generated first. Returns whether it will be."""
    data = instantiate(cfg.data, seed=cfg.seed)
    if data.needs_generation():
        return True
    data.mixture()
    if data.val_split:
        list_shards(data.root / data.val_split, data.allow_pipe_urls)
    return False


def check_benchmarks(cfg: DictConfig) -> None:
    """Every configured benchmark's files are there (before training, not after it)."""
    for name, benchmark_cfg in cfg.eval.benchmarks.items():
        try:
            instantiate(benchmark_cfg).check()
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"eval.benchmarks.{name}: {e} (eval=none, or ~eval.benchmarks.{name}, to train without it)") from None


def preflight(cfg: DictConfig) -> BatchPlan:
    """Fail before any work: a setting out of range, data that cannot be listed, missing
    benchmark files, unknown template, missing weights, tokenizer or init_from run, a global
    batch the devices cannot divide, devices that disagree with SLURM's tasks."""
    check_numbers(cfg)
    generates_data = check_data(cfg)
    if cfg.eval_after_train and cfg.eval.benchmarks:
        check_benchmarks(cfg)
    if cfg.stage.template not in TEMPLATE_NAMES:
        raise ValueError(f"stage.template={cfg.stage.template!r} is not one of {TEMPLATE_NAMES}")
    for component, name in pretrained_ids(cfg).items():
        if name:
            resolve_weights(name, "LLM weights" if component == "llm" else "vision weights")
    if cfg.stage.init_from:
        init_weights_path(cfg.stage.init_from)
    if not generates_data:  # a generated synthetic mixture brings its own tokenizer
        resolve_weights(cfg.llm.tokenizer, "tokenizer")
    check_slurm_tasks(cfg.trainer)
    plan = batch_plan(cfg)
    if plan.max_steps is None:
        raise ValueError(f"stage.epochs={cfg.stage.epochs} but the size of {cfg.data.root} is unknown (no manifest.json); "
                         "convert the data first or set trainer.max_steps")
    return plan


def build_run(cfg: DictConfig, load_weights: bool = True) -> tuple[LMM, SampleProcessor]:
    """Tokenizer, model and the sample processor that matches them."""
    tokenizer = load_tokenizer(cfg.llm.tokenizer)
    model = build_model(cfg, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), load_weights=load_weights)
    vocab = model.llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab + 1:  # the image token may lie one past the vocabulary (never embedded)
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LLM embeds only {vocab}; raise llm.model.arch.vocab_size")
    vision = model.vision
    transform = ImageTransform(vision.image_size, vision.mean, vision.std, vision.image_aspect, fill=vision.pad_colour)
    instruction_length = model.connector.max_instruction_length if model.connector.uses_instruction else None
    processor = SampleProcessor(
        tokenizer, cfg.stage.template, transform, model.num_image_tokens, cfg.data.max_length, instruction_length
    )
    return model, processor


def random_init_components(cfg: DictConfig) -> list[str]:
    """Components with no pretrained weights: their random init must travel with the connector."""
    return [component for component, name in pretrained_ids(cfg).items() if not name]


def init_weights_path(source: str) -> Path:
    """A finished run's final.safetensors (or a safetensors file), or a one-line error."""
    path = Path(source)
    path = path / FINAL_WEIGHTS if path.is_dir() or not path.suffix else path
    if not path.exists():
        raise FileNotFoundError(f"stage.init_from: no {FINAL_WEIGHTS} at {path}; run that stage first (has it finished?)")
    return path


def init_from(model: LMM, source: str, components: list[str]) -> None:
    """Load `components` from a finished run (its final.safetensors) or a safetensors file,
    reading only their tensors."""
    path = init_weights_path(source)
    with safe_open(str(path), framework="pt") as weights:
        keys = list(weights.keys())
        for name in components:
            prefix = f"{name}."
            part = {k[len(prefix):]: weights.get_tensor(k) for k in keys if k.startswith(prefix)}
            _load_component(model, name, part, path)
    print(f"[lmm] initialised {', '.join(components)} from {path}")


def _load_component(model: LMM, name: str, part: dict, path: Path) -> None:
    missing, unexpected = getattr(model, name).load_state_dict(part, strict=False)
    if unexpected or (missing and name == "connector"):
        raise ValueError(f"stage.init_from {path}: {name} does not match (missing {missing[:3]}, unexpected {unexpected[:3]})")


def command_overrides() -> list[str]:
    """The command-line overrides of this run (what an ablation table groups by), if under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def new_results(cfg: DictConfig, cost: dict | None) -> dict:
    """results.json's layout: the run, its training cost, then per-benchmark and flat metrics."""
    return {"name": cfg.name, "overrides": command_overrides(), "cost": cost or {}, "benchmarks": {}, "metrics": {}}


def write_results(run_dir: Path, results: dict) -> None:
    """results.json, written by rank 0 only."""
    if not is_main_process():
        return
    (run_dir / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    print(f"[lmm] results written to {run_dir / RESULTS}")


def evaluate(
    cfg: DictConfig, model: LMM, processor: SampleProcessor, run_dir: Path, device: torch.device | str = "cpu", cost: dict | None = None
) -> dict:
    """Run every configured benchmark; write results.json (with the training `cost`, if any) and
    predictions/<benchmark>.jsonl."""
    results = new_results(cfg, cost)
    for name, benchmark_cfg in cfg.eval.benchmarks.items():
        result = instantiate(benchmark_cfg).run(model, processor, device, out_dir=run_dir / "predictions")
        results["benchmarks"][name] = result
        results["metrics"].update({f"{name}/{key}": value for key, value in result["metrics"].items()})
    if is_main_process():
        print(format_table(results))
    write_results(run_dir, results)
    return results


def first_process() -> bool:
    """Whether this process is global rank 0, from the launcher's environment (torchrun, SLURM,
    Lightning's own children, a node of a multi-node launch), before any process group exists:
    only when every rank the environment names is 0 (a child Lightning starts inside an
    interactive SLURM shell inherits SLURM_PROCID=0 but has LOCAL_RANK=1)."""
    ranks = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    return all(int(os.environ[key]) == 0 for key in ranks if os.environ.get(key, "").isdigit())


def finished(run_dir: Path) -> bool:
    """One definition: status.json says so (written last, after final.safetensors and
    results.json, which must still be there); runs from before status.json count when both are."""
    status = read_status(run_dir).get("status", "finished")
    return status == "finished" and (run_dir / FINAL_WEIGHTS).exists() and (run_dir / RESULTS).exists()


def train(cfg: DictConfig) -> dict | None:
    """Train one stage in `cfg.run_dir`, which rank 0 holds (a lock) for the whole run; the run
    directory's recorded config must be this one (lmm.rundir)."""
    run_dir = Path(cfg.run_dir)
    main = first_process()
    with contextlib.ExitStack() as held:
        if main:
            requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0  # the old job may still be checkpointing
            held.enter_context(RunLock(run_dir, wait_s=float(cfg.get("run_lock_wait_s") or (600 if requeued else 0))))
            if cfg.get("force"):
                for stale in (IDENTITY, STATUS):
                    (run_dir / stale).unlink(missing_ok=True)
            claim_identity(run_dir, cfg)
            if finished(run_dir) and not cfg.get("force"):
                print(f"[lmm] {run_dir} has already finished; not re-running it (force=true, or delete the directory, to redo it).")
                results = json.loads((run_dir / RESULTS).read_text())
                print(format_table(results))
                return results
            set_status(run_dir, "running")
        try:
            results = _train(cfg, run_dir)
        except BaseException as e:
            if main:
                set_status(run_dir, "failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
            raise
        if main:
            set_status(run_dir, "finished")  # last: final.safetensors and results.json exist
        return results


def _train(cfg: DictConfig, run_dir: Path) -> dict | None:
    evaluates = bool(cfg.eval_after_train and cfg.eval.benchmarks)
    plan = preflight(cfg)
    if cfg.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.ensure_data()
    strategy = instantiate(cfg.strategy)
    checkpoints = AtomicCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, every_n_train_steps=cfg.checkpoint_every, save_top_k=0)
    no_validation = {"limit_val_batches": 0} if not datamodule.val_split else {}
    trainer: L.Trainer = instantiate(  # before the model: under FSDP only rank 0 reads the weights
        cfg.trainer,
        **no_validation,
        max_steps=plan.max_steps,
        accumulate_grad_batches=plan.accumulation,
        strategy=strategy,
        plugins=cluster_plugins(),
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version=""),
        callbacks=[checkpoints, *([CheckpointBeforeRequeue(run_dir / "checkpoints" / LAST)] if in_slurm_job() else [])],
        default_root_dir=str(run_dir),
    )
    host_bytes = host_memory()[0]
    reset_peak_host_memory()
    model, processor, initial_state = build_for_stage(cfg, isinstance(strategy, FSDP2Strategy), first_process())
    datamodule.attach(processor, processor.tokenizer.pad_token_id)
    module = LMMModule(
        model, **OmegaConf.to_container(cfg.stage.optim, resolve=True), train=dict(cfg.stage.train),
        vision_last_blocks=cfg.stage.get("vision_last_blocks"), lora=lora_options(cfg),
        activation_checkpointing=bool(cfg.get("activation_checkpointing")), max_skip_rate=datamodule.max_skip_rate,
        skip_check_after=datamodule.skip_check_after,
    )
    module.initial_state, module.host_bytes_at_build = initial_state, host_bytes
    del initial_state
    record_job(run_dir)
    if first_process():
        print(f"[lmm] global batch {plan.global_batch} = {plan.per_device} per device × {plan.world} device(s) × "
              f"{plan.accumulation} accumulation; {plan.max_steps} steps")
    last = None if cfg.get("force") else latest_checkpoint(run_dir / "checkpoints")  # force=true starts over
    if last is not None:
        print(f"[lmm] resuming from {last}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last else None)
    cost = module.cost_summary()  # a collective: every rank takes part
    check_trained(module, cost)  # world totals: every rank decides alike
    model = final_model(cfg, module, trainer, run_dir / FINAL_WEIGHTS)  # also a collective under FSDP
    main = trainer.global_rank == 0
    if main:
        print(f"[lmm] trained {trainer.global_step} steps; weights in {run_dir / FINAL_WEIGHTS}")
        print(f"[lmm] samples seen {module.seen_total}, skipped {module.skipped_total} {dict(module.skipped)}")
        print(f"[lmm] cost: {cost['tokens_seen']:,d} tokens, {cost['flops']:.3g} FLOPs, {cost['train_wall_s']:.1f} s training")
    if not evaluates:
        results = new_results(cfg, cost)
        write_results(run_dir, results)
        return results if main else None
    # Every rank evaluates (benchmarks split their questions across ranks); rank 0 writes.
    results = evaluate(cfg, model, processor, run_dir, device=module.device, cost=cost)
    return results if main else None


def lora_options(cfg: DictConfig) -> dict | None:
    lora = cfg.stage.get("lora")
    return OmegaConf.to_container(lora, resolve=True) if lora else None


def check_trained(module: LMMModule, cost: dict) -> None:
    """A run that trained on no tokens, or skipped more than data.max_skip_rate of its samples
    (checked during training only after data.skip_check_after samples), did not happen: it fails
    before any weights or results are written."""
    seen, skipped = module.seen_total, module.skipped_total
    if not cost["tokens_seen"]:
        raise AgreedStop(f"trained on no tokens: {skipped} of {seen} samples were skipped (see the skipped lines above; "
                         "e.g. data.max_length too small for the image tokens, or unreadable data)")
    if seen and skipped / seen > module.max_skip_rate:
        raise AgreedStop(f"{skipped} of {seen} samples skipped ({skipped / seen:.1%} > data.max_skip_rate="
                         f"{module.max_skip_rate:.1%}) over the whole run; fix the data or raise data.max_skip_rate")


def build_for_stage(cfg: DictConfig, sharded: bool, main: bool) -> tuple[LMM, SampleProcessor, dict | None]:
    """The model a stage starts from: pretrained weights, `stage.init_from` (the connector and
    random-init parts) and the seeded random init of the rest.

    Sharded (FSDP): every rank builds on the meta device, and rank 0 (`main`) alone builds the real model
    and returns its full state (LoRA adapters included), which LMMModule broadcasts after
    sharding. Otherwise the returned model holds its weights and the state is None. Seeded
    here, so every rebuild (a resumed run, `lmm.checkpoint consolidate`) has the same init."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if not sharded:
        model, processor = build_run(cfg)
        if cfg.stage.init_from:
            init_from(model, cfg.stage.init_from, ["connector", *random_init_components(cfg)])
        return model, processor, None
    state = None
    if main:
        full, _, _ = build_for_stage(cfg, sharded=False, main=True)
        if lora_options(cfg):
            full.llm = add_lora(full.llm, **lora_options(cfg))
        state = full.state_dict()
        del full
    with parameters_on_meta():
        model, processor = build_run(cfg, load_weights=False)
    return model, processor, state


def final_model(cfg: DictConfig, module: LMMModule, trainer: L.Trainer, path: Path) -> LMM:
    """Write the trained weights to `path` (rank 0; LoRA adapters merged into the base weights,
    each part in its training dtype) and return the model to evaluate on every rank.

    Sharded (FSDP): the full state is gathered to rank 0's host memory only; the optimizer state
    is freed; then every rank reads the file into a model in the compute dtype."""
    rank = trainer.global_rank
    if not isinstance(trainer.strategy, FSDP2Strategy):
        model = module.model
        model.llm = merge_lora(model.llm)
        if rank == 0:
            save_weights(model, path)
        trainer.strategy.barrier()
        return model.to(module.device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # rank 0 only
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    if rank == 0:
        with parameters_on_meta():
            model, _ = build_run(cfg, load_weights=False)
        if lora_options(cfg):
            model.llm = add_lora(model.llm, **lora_options(cfg))
        # Gathered tensors may be views into a larger buffer, which safetensors refuses to save.
        own = {k: v if v.untyped_storage().nbytes() == v.nbytes else v.clone() for k, v in state.items()}
        model.load_state_dict(own, assign=True)
        del own
        model.llm = merge_lora(model.llm)
        save_weights(model, path)
        del model
    del state
    trainer.strategy.barrier()
    with parameters_on_meta():
        model, _ = build_run(cfg, load_weights=False)
    model.load_state_dict(load_file(str(path), device=str(module.device)), assign=True)
    return model.to(module.device, dtype=trainer.strategy.param_dtype)


def evaluate_run(cfg: DictConfig) -> dict:
    """task=eval: score a finished run (`ckpt=RUN_DIR`), or an lmm directory (export.format=lmm,
    lmm.convert_llava), with the configured benchmarks."""
    from lmm.export import LMM_CONFIG, load_pretrained

    if not cfg.get("ckpt"):
        raise ValueError("task=eval needs ckpt=RUN_DIR (a run directory holding final.safetensors) or an lmm directory")
    run_dir = Path(cfg.ckpt)
    if (run_dir / LMM_CONFIG).exists():  # self-describing: its own model config, not this command's
        model, processor = load_pretrained(run_dir)
    else:
        model, processor = build_run(cfg)
        init_from(model, str(run_dir), ["vision", "connector", "llm"])
    trained = run_dir / RESULTS  # keep the training cost with the new scores
    cost = json.loads(trained.read_text()).get("cost") if trained.exists() else None
    return evaluate(cfg, model, processor, Path(cfg.run_dir), cost=cost)
