"""The evaluation of a model or a run: every configured benchmark, results.json, predictions/.

evaluate(cfg, model, processor, run_dir)   after training (every rank; rank 0 writes)
evaluate_run(cfg)                          task=eval: a finished run (ckpt=RUN_DIR) or an lmm directory
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmm.build.factory import LMM_CONFIG, build_trained, init_weights_path, load_pretrained, run_config, say_drift
from lmm.core.config import command_overrides
from lmm.core.ranks import is_main_process
from lmm.data.sample import SampleProcessor
from lmm.eval.blind import BLIND, NEEDS_VISION, QUESTION_TYPE, blank_images, blind_summary, mark_blind_answers
from lmm.model.lmm import LMM
from lmm.run.directory import PREDICTIONS, read_results, write_results


def new_results(cfg: DictConfig, cost: dict | None) -> dict:
    """results.json's layout: the run, its training cost, then per-benchmark and flat metrics."""
    return {"name": cfg.name, "overrides": command_overrides(), "cost": cost or {}, "benchmarks": {}, "metrics": {}}


def question_type_metrics(name: str, per_question_type: dict[str, float]) -> dict[str, float]:
    """A benchmark's per-question-type scores as flat metrics, `<name>/qtype/<source>/<type>`, so that
    lmm ablate gives them intervals (pass them with --metrics; its default tables leave them out)."""
    return {f"{name}/{QUESTION_TYPE}/{key}": value for key, value in per_question_type.items()}


def save_results(run_dir: Path, results: dict) -> None:
    """results.json, written by rank 0 only (a run that scored nothing keeps its cost there)."""
    if is_main_process():
        path = write_results(run_dir, results)
        print(
            f"[lmm] results written to {path}"
            if results["benchmarks"]
            else f"[lmm] cost written to {path} (no benchmark was scored)"
        )


def evaluate(
    cfg: DictConfig,
    model: LMM,
    processor: SampleProcessor,
    run_dir: Path,
    device: torch.device | str = "cpu",
    cost: dict | None = None,
) -> dict:
    """Run every configured benchmark; write results.json (with the training `cost`, if any) and
    predictions/<benchmark>.jsonl."""
    results = new_results(cfg, cost)
    results["harness"] = {"name": "lmm", "version": metadata.version("lmm"), "template": processor.template}
    predictions = Path(run_dir) / PREDICTIONS
    blind = bool(cfg.eval.get("blind", False))
    for name, benchmark_cfg in cfg.eval.benchmarks.items():
        benchmark = instantiate(benchmark_cfg)
        result = benchmark.run(model, processor, device, out_dir=predictions)
        result["decoding"] = {"strategy": "greedy", "max_new_tokens": benchmark.max_new_tokens}
        results["benchmarks"][name] = result
        results["metrics"].update({f"{name}/{key}": value for key, value in result["metrics"].items()})
        results["metrics"].update(question_type_metrics(name, result.get("per_question_type", {})))
        if blind:  # the same questions and prompts, every image blanked (lmm.eval.blind)
            benchmark.name = f"{benchmark.name}{BLIND}"
            with blank_images(model):
                blind_result = benchmark.run(model, processor, device, out_dir=predictions)
            result["blind"] = blind_summary(result, blind_result)
            for suffix, values in (
                (BLIND, result["blind"]["metrics"]),
                (NEEDS_VISION, result["blind"]["needs_vision"]),
            ):
                results["metrics"].update({f"{name}{suffix}/{key}": value for key, value in values.items()})
            for suffix, key in ((BLIND, "per_question_type"), (NEEDS_VISION, "needs_vision_per_question_type")):
                results["metrics"].update(question_type_metrics(f"{name}{suffix}", result["blind"].get(key, {})))
            mark_blind_answers(predictions, name)
    if is_main_process():
        print(format_table(results))
    save_results(run_dir, results)
    return results


def evaluate_run(cfg: DictConfig) -> dict:
    """task=eval: score a finished run (`ckpt=RUN_DIR`), or an lmm directory (export.format=lmm,
    lmm.interop.convert_llava), with the configured benchmarks."""
    if not cfg.get("ckpt"):
        raise ValueError("task=eval needs ckpt=RUN_DIR (a run directory holding final.safetensors) or an lmm directory")
    run_dir = Path(cfg.ckpt)
    if (run_dir / LMM_CONFIG).exists():  # self-describing: its own model config, not this command's
        model, processor = load_pretrained(run_dir)
    else:  # the model as it was trained: the run's own saved config, whatever today's defaults say
        trained_cfg = run_config(run_dir, cfg)
        say_drift(run_dir, trained_cfg, cfg, "scoring")
        model, processor = build_trained(trained_cfg, init_weights_path(str(run_dir)))
    trained = read_results(run_dir)  # keep the training cost with the new scores
    return evaluate(cfg, model, processor, Path(cfg.run_dir), cost=trained.get("cost") if trained else None)


def format_table(results: dict) -> str:
    """Markdown tables, one per benchmark: metric | model | baseline (when known) | n."""
    blocks = []
    for name, bench in results["benchmarks"].items():
        lines = [
            f"{name} (n={bench.get('n', '?')}, {bench.get('wall_s', '?')} s)",
            "",
            "| metric | model | baseline | n |",
            "|---|---:|---:|---:|",
        ]
        for key, value in bench["metrics"].items():
            baseline = bench.get("baselines", {}).get(key)
            n = bench.get("counts", {}).get(key, bench.get("n", ""))
            lines.append(f"| {key} | {value:.4f} | {'—' if baseline is None else f'{baseline:.4f}'} | {n} |")
        if "blind" in bench:
            lines += ["", "| metric | model | blind | needs vision |", "|---|---:|---:|---:|"]
            for key, value in bench["blind"]["metrics"].items():
                gain = bench["blind"]["needs_vision"].get(key)
                seen = bench["metrics"].get(key)
                lines.append(
                    f"| {key} | {'—' if seen is None else f'{seen:.4f}'} | {value:.4f} | "
                    f"{'—' if gain is None else f'{gain:+.4f}'} |"
                )
        if bench.get("skipped"):
            lines.append(f"\n{bench['skipped']} question(s) skipped (see log)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
