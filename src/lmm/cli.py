"""`lmm`: one command with a subcommand per job; `lmm --help` lists them.

`lmm train [overrides]` is `python run.py [overrides]` (Hydra: `-m` sweeps, `task=`, `experiment=`);
`lmm eval RUN_DIR` and `lmm export RUN_DIR` take a run directory as is (lmm.commands.run_dir);
every other subcommand is its module's own argparse command (`lmm SUBCOMMAND --help`). The
`python -m lmm.<module>` forms keep working.
"""

from __future__ import annotations

import importlib
import os
import sys

from lmm.core.config import RUN_PY

# subcommand -> (module whose main() runs it, what it does). Modules are imported only when chosen,
# so `lmm --help` answers at once.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "run.py",
        "train (or task=eval|describe|simulate|export) from Hydra overrides: the same as python run.py",
    ),
    "eval": ("lmm.commands.run_dir", "score a run directory (or an lmm directory) as it was trained"),
    "export": (
        "lmm.commands.run_dir",
        "export a run as transformers' Llava/LlavaNext (export.format=hf) or an lmm directory",
    ),
    "predict": ("lmm.commands.predict", "answer a JSONL question file (LLaVA's model_vqa format) with a trained model"),
    "chat": ("lmm.commands.chat", "chat with a trained model about one or more images"),
    "ablate": ("lmm.analysis.ablate", "the ablation table of a sweep: mean, intervals, paired tests; md/tex/csv/png"),
    "convert": ("lmm.data.convert", "LLaVA JSON + image folders -> WebDataset shards with indexes"),
    "convert-llava": ("lmm.interop.convert_llava", "an official LLaVA-1.5 checkpoint -> an lmm directory"),
    "index": ("lmm.data.index", "index shards made elsewhere, so each rank reads only its own samples"),
    "synthetic": ("lmm.data.synthetic", "generate the synthetic mixture (make data)"),
    "consolidate": ("lmm.commands.consolidate", "a run's latest (sharded) checkpoint -> one safetensors file"),
    "pretrain-tiny": ("lmm.commands.pretrain_tiny", "rebuild pretrained/tiny/: the tiny CLIP-style tower and chat LLM"),
    "bench": (
        "lmm.bench",
        "run one benchmark: lmm bench {" + "data, eval, train-step, packing, straggler, data-scale, loss, mfu}",
    ),
    "gpu-check": (
        "lmm.commands.gpu_check",
        "(GPU) one PASS/FAIL line per GPU path: FSDP recipe, LoRA, packing, MFU, fused loss",
    ),
    "probe-words": ("lmm.analysis.probe", "can a frozen tower read? a linear probe of rendered words per resolution"),
    "lmms-eval-tasks": ("lmm.interop.lmms_eval_tasks", "write lmms-eval task folders for the synthetic benchmarks"),
    "scale-out-docs": ("lmm.analysis.simulate.docs", "write task=simulate results into a docs page (make scale-out)"),
}
RUN_DIRECTORY_TASKS = ("eval", "export")


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "usage: lmm SUBCOMMAND [arguments]   (lmm SUBCOMMAND --help for its own)\n\nsubcommands:\n" + "\n".join(
        lines
    )


def run(name: str, argv: list[str]):
    """Run subcommand `name` with `argv`; returns what its main() returns."""
    module, _ = SUBCOMMANDS[name]
    saved, sys.argv = sys.argv, [f"lmm {name}", *argv]  # argparse's prog, and what Hydra parses
    try:
        if name == "train":  # this process becomes `python run.py ...`: Hydra's sweeps and launchers see run.py itself
            if not RUN_PY.is_file():
                sys.exit(
                    f"lmm train: no {RUN_PY}; lmm runs from its checkout (run.py and conf/ beside src/): "
                    "pip install -e ."
                )
            os.execv(sys.executable, [sys.executable, str(RUN_PY), *argv])
        if name in RUN_DIRECTORY_TASKS:
            return importlib.import_module(module).main(name, argv)
        return importlib.import_module(module).main(argv)
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        sys.exit(f"lmm: no subcommand {name!r}; one of: {', '.join(SUBCOMMANDS)} (lmm --help)")
    result = run(name, rest)
    if isinstance(result, int) and not isinstance(result, bool):  # an exit status (gpu-check's)
        sys.exit(result)


if __name__ == "__main__":
    main()
