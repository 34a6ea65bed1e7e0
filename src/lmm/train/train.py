"""Train one stage from a composed config: preflight, build, fit, save the weights, hand them to evaluation."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmm.build.factory import build_for_stage, build_run, build_trained, init_weights_path, pretrained_ids
from lmm.build.meta import host_memory, parameters_on_meta, reset_peak_host_memory
from lmm.build.stage import Stage, stage_of
from lmm.core.ranks import first_process
from lmm.core.save import file_sha256, save_weights
from lmm.core.weights import resolve_weights
from lmm.data.catalog import check_indexes
from lmm.data.conversation import TEMPLATE_NAMES
from lmm.data.datamodule import LMMDataModule
from lmm.data.shards import child, list_complete_shards
from lmm.eval.evaluate import evaluate, format_table, new_results, save_results
from lmm.model.lmm import LMM
from lmm.run import log as runlog
from lmm.run.directory import (
    CHECKPOINTS,
    FINAL_WEIGHTS,
    IDENTITY,
    STATUS,
    RunLock,
    batch_layout,
    claim_identity,
    finished,
    read_results,
    read_status,
    record_data,
    rerun_command,
    save_run_config,
    set_status,
)
from lmm.run.plan import BatchPlan, batch_plan
from lmm.train.checkpoint import LAST, AtomicCheckpoint, resume_point
from lmm.train.module import LMMModule
from lmm.train.progress import StageProgressBar
from lmm.train.slurm import CheckpointBeforeRequeue, check_slurm_tasks, cluster_plugins, in_slurm_job, record_job
from lmm.train.strategy import FSDP2Strategy

# Numeric settings and their smallest sensible value: 0 batch size used to hang, memory growing.
AT_LEAST = {
    "data.batch_size": 1,
    "data.max_length": 8,
    "data.num_workers": 0,
    "data.shuffle_buffer": 1,
    "data.length_group_size": 1,
    "data.skip_check_after": 0,
    "trainer.max_steps": 1,
    "checkpoint_every": 1,
    "stage.global_batch_size": 1,
    "stage.epochs": 0,
    "stage.optim.lr": 0,
    "stage.optim.weight_decay": 0,
}
POSITIVE = ("stage.optim.lr", "stage.epochs")  # strictly above their bound


def check_numbers(cfg: DictConfig) -> None:
    """Every numeric setting is a number in its range (a clear error instead of a hang or a crash mid-run)."""
    epochs = OmegaConf.select(cfg, "stage.epochs")
    for key, low in AT_LEAST.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in ("stage.global_batch_size", "stage.epochs"):
            continue  # optional
        if key == "trainer.max_steps" and epochs is not None and value == -1:
            continue  # an epoch-based stage: the step count comes from stage.epochs and the data's size
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < low
            or (key in POSITIVE and value <= low)
        ):
            bound = f"> {low}" if key in POSITIVE else f">= {low}"
            raise ValueError(f"{key}={value!r}: must be a number {bound}")
    rate = OmegaConf.select(cfg, "data.max_skip_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"data.max_skip_rate={rate!r}: must be a fraction between 0 and 1 (0.01 = 1%)")


# Attention implementations that need a package beside torch and transformers: (package, its check).
ATTENTION_PACKAGES = {
    "flash_attention_2": ("flash-attn", "is_flash_attn_2_available"),
    "flash_attention_3": ("flash-attn 3 (flash_attn_interface)", "is_flash_attn_3_available"),
}


def check_attention(implementation: str) -> None:
    """An attention implementation whose package is missing stops before any work, in one line."""
    import transformers.utils as available

    if implementation in ATTENTION_PACKAGES:
        package, check = ATTENTION_PACKAGES[implementation]
        if not getattr(available, check, lambda: False)():
            raise ValueError(
                f"llm.model.attn_implementation={implementation} needs the {package} package (and a CUDA GPU), "
                "which is not installed here; install it, or use llm.model.attn_implementation=sdpa"
            )


def check_data(data: LMMDataModule) -> bool:
    """The training (and validation) shards can be listed and every URL checked, unless the
    synthetic mixture will be generated first. Returns whether it will be."""
    if data.needs_generation():
        return True
    sources = data.mixture()
    if data.plan == "index":
        check_indexes(sources)
    if data.val_split:
        list_complete_shards(child(data.root, data.val_split), data.allow_pipe_urls)
    return False


def check_benchmarks(cfg: DictConfig, generated_root: Path | None = None) -> None:
    """Every configured benchmark's files are there (before training, not after it), except a
    benchmark on the synthetic mixture that training is about to generate."""
    for name, benchmark_cfg in cfg.eval.benchmarks.items():
        if (
            generated_root is not None
            and Path(str(benchmark_cfg.get("root", ""))).resolve() == generated_root.resolve()
        ):
            continue
        try:
            instantiate(benchmark_cfg).check()
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(
                f"eval.benchmarks.{name}: {e} (eval=none, or ~eval.benchmarks.{name}, to train without it)"
            ) from None


def preflight(cfg: DictConfig) -> tuple[BatchPlan, LMMDataModule]:
    """Fail before any work: a setting out of range, data that cannot be listed, missing
    benchmark files, unknown template, missing weights, tokenizer or init_from run, a global
    batch the devices cannot divide, devices that disagree with SLURM's tasks. Returns the batch
    plan and the data module it checked (built once; training uses it)."""
    check_numbers(cfg)
    data = instantiate(cfg.data, seed=cfg.seed)
    generates_data = check_data(data)
    if cfg.eval_after_train and cfg.eval.benchmarks:
        check_benchmarks(cfg, Path(cfg.data.root) if generates_data else None)
    check_attention(OmegaConf.select(cfg, "llm.model.attn_implementation", default="sdpa"))
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
        raise ValueError(
            f"stage.epochs={cfg.stage.epochs} but the size of {cfg.data.root} is unknown (no manifest.json); "
            "convert the data first or set trainer.max_steps"
        )
    return plan, data


def train(cfg: DictConfig) -> dict | None:
    """Train one stage in `cfg.run_dir`, which rank 0 holds (a lock) for the whole run; the run
    directory's recorded config must be this one (lmm.run.directory)."""
    run_dir = Path(cfg.run_dir)
    main = first_process()
    with contextlib.ExitStack() as held:
        if main:
            requeued = (
                int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
            )  # the old job may still be checkpointing
            lock = held.enter_context(
                RunLock(run_dir, wait_s=float(cfg.get("run_lock_wait_s") or (600 if requeued else 0)), announce=False)
            )
            layout = accept_run(run_dir, cfg, lock)
            if finished(run_dir) and not cfg.get("force"):
                print(
                    f"[lmm] {run_dir} has already finished; not re-running it (force=true, or delete the directory, "
                    "to redo it)."
                )
                results = read_results(run_dir)
                print(format_table(results))
                print_next_commands(run_dir)
                return results
            set_status(run_dir, "running", layout=layout)
        try:
            results = _train(cfg, run_dir)
        except BaseException as e:
            if main:
                set_status(run_dir, "failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500], layout=layout)
            raise
        if main:
            # Last: final.safetensors and results.json exist; its sha256 is what every later load checks.
            set_status(run_dir, "finished", final_sha256=file_sha256(run_dir / FINAL_WEIGHTS), layout=layout)
            print_next_commands(run_dir)
        return results


def accept_run(run_dir: Path, cfg: DictConfig, lock: RunLock) -> dict | None:
    """Rank 0, holding the lock: check the run's identity (RunMismatch refuses the command with
    nothing in the directory changed), then take the run: who holds it, its saved config, its
    log. A resume with another layout of the same global batch says so. Returns the layout."""
    if cfg.get("force"):  # the run starts over: its identity, status and checkpoints go
        for stale in (IDENTITY, STATUS):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    claim_identity(run_dir, cfg)
    layout, before = batch_layout(cfg), read_status(run_dir).get("layout")
    if before and layout and before != layout and not finished(run_dir):
        print(
            f"[lmm] resuming on {layout['devices']} device(s) × {layout['per_device']} per device × "
            f"{layout['accumulation']} "
            f"accumulation (was {before['devices']} × {before['per_device']} × {before['accumulation']}): the global "
            "batch "
            f"of {layout['global_batch']} is unchanged, so the run continues at its next sample"
        )
    lock.announce()
    save_run_config(run_dir, cfg, replace=bool(cfg.get("force")))
    runlog.accept()
    return layout


def print_next_commands(run_dir: Path) -> None:
    """The commands that re-score and export this run, exactly as they can be pasted; for
    a run that scored nothing (a pretraining stage), the stage that builds on it."""
    if not (read_results(run_dir) or {}).get("benchmarks"):
        print(f"[lmm] next: a finetune stage that starts from it, stage.init_from={run_dir}")
        return
    print(f"[lmm] re-score: {rerun_command('eval', run_dir)}")
    print(f"[lmm] export:   {rerun_command('export', run_dir)}   (export.format=hf for transformers' Llava)")


def _train(cfg: DictConfig, run_dir: Path) -> dict | None:
    evaluates = bool(cfg.eval_after_train and cfg.eval.benchmarks)
    plan, datamodule = preflight(cfg)
    if cfg.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    L.seed_everything(cfg.seed, workers=True)
    datamodule.ensure_data()
    if first_process():
        record_data(run_dir, cfg)
    strategy = instantiate(cfg.strategy)
    # enable_version_counter=False: last.ckpt is replaced in place, never joined by a last-v1.ckpt no re-run would read.
    checkpoints = AtomicCheckpoint(
        dirpath=run_dir / CHECKPOINTS,
        save_last=True,
        every_n_train_steps=cfg.checkpoint_every,
        save_top_k=0,
        enable_version_counter=False,
    )
    no_validation = {"limit_val_batches": 0} if not datamodule.val_split else {}
    trainer: L.Trainer = instantiate(  # before the model: under FSDP only rank 0 reads the weights
        cfg.trainer,
        **no_validation,
        max_steps=plan.max_steps,
        accumulate_grad_batches=plan.accumulation,
        strategy=strategy,
        plugins=cluster_plugins(),
        logger=[instantiate(spec) for spec in (cfg.get("logger") or {}).values()] or False,  # conf/logger/
        callbacks=[
            checkpoints,
            *([CheckpointBeforeRequeue(run_dir / CHECKPOINTS / LAST)] if in_slurm_job() else []),
            *([StageProgressBar(cfg.stage.name)] if cfg.trainer.get("enable_progress_bar", True) else []),
        ],
        default_root_dir=str(run_dir),
    )
    host_bytes = host_memory()[0]
    reset_peak_host_memory()
    model, processor, initial_state = build_for_stage(cfg, isinstance(strategy, FSDP2Strategy), first_process())
    datamodule.attach(processor, processor.tokenizer.pad_token_id)
    stage = stage_of(cfg)
    module = LMMModule(
        model,
        stage,
        activation_checkpointing=bool(cfg.get("activation_checkpointing")),
        max_skip_rate=datamodule.max_skip_rate,
        skip_check_after=datamodule.skip_check_after,
    )
    module.initial_state, module.host_bytes_at_build = initial_state, host_bytes
    del initial_state
    record_job(run_dir)
    if first_process():
        print(
            f"[lmm] global batch {plan.global_batch} = {plan.per_device} per device × {plan.world} device(s) × "
            f"{plan.accumulation} accumulation; {plan.max_steps} steps"
        )
    last = (
        None if cfg.get("force") else resume_point(run_dir / CHECKPOINTS, announce=first_process())
    )  # force=true starts over
    if last is not None:
        print(f"[lmm] resuming from {last}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last else None)
    cost = module.throughput.cost_summary(trainer, module)  # a collective: every rank takes part
    module.skips.check_run(cost["tokens_seen"])  # world totals: every rank decides alike, before anything is written
    model = final_model(cfg, stage, module, trainer, run_dir / FINAL_WEIGHTS)  # also a collective under FSDP
    main = trainer.global_rank == 0
    if main:
        print(f"[lmm] trained {trainer.global_step} steps; weights in {run_dir / FINAL_WEIGHTS}")
        reasons = ", ".join(f"{kind} {n}" for kind, n in sorted(module.skips.skipped.items()))
        print(
            f"[lmm] samples seen {module.skips.seen_total}, skipped {module.skips.skipped_total}"
            + (f" ({reasons})" if reasons else "")
        )
        print(
            f"[lmm] cost: {cost['tokens_seen']:,d} tokens, {cost['flops']:.3g} FLOPs, {cost['train_wall_s']:.1f} s "
            "training"
        )
    if not evaluates:
        results = new_results(cfg, cost)
        save_results(run_dir, results)
        if main:
            log_final(trainer, results)
        return results if main else None
    # Every rank evaluates (benchmarks split their questions across ranks); rank 0 writes.
    results = evaluate(cfg, model, processor, run_dir, device=module.device, cost=cost)
    if main:
        log_final(trainer, results)
    return results if main else None


def log_final(trainer: L.Trainer, results: dict) -> None:
    """The run's scores and cost totals reach every configured logger, at the last step."""
    final = {f"eval/{key}": value for key, value in results["metrics"].items()}
    final |= {
        f"cost/{key}": float(value)
        for key, value in (results.get("cost") or {}).items()
        if isinstance(value, (int, float))
    }
    for logger in trainer.loggers:
        logger.log_metrics(final, step=trainer.global_step)
        logger.save()
        logger.finalize("success")


def final_model(cfg: DictConfig, stage: Stage, module: LMMModule, trainer: L.Trainer, path: Path) -> LMM:
    """Write the trained weights to `path` (rank 0; LoRA adapters merged into the base weights,
    each part in its training dtype) and return the model to evaluate on every rank.

    Sharded (FSDP): the full state is gathered to rank 0's host memory only; the optimizer state
    is freed; then every rank reads the file into a model in the compute dtype."""
    rank = trainer.global_rank
    if not isinstance(trainer.strategy, FSDP2Strategy):
        model = stage.merge(module.model)
        if rank == 0:
            save_weights(model, path)
        trainer.strategy.barrier()
        return model.to(module.device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )  # rank 0 only
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    if rank == 0:
        with parameters_on_meta():
            model, _ = build_run(cfg, load_weights=False)
        # Gathered tensors may be views into a larger buffer, which safetensors refuses to save.
        own = {k: v if v.untyped_storage().nbytes() == v.nbytes else v.clone() for k, v in state.items()}
        model = stage.load_trained(model, own, assign=True)
        del own
        save_weights(model, path)
        del model
    del state
    trainer.strategy.barrier()
    return build_trained(cfg, path, module.device, dtype=trainer.strategy.param_dtype)[0]
