"""Check the GPU path end to end on whatever CUDA GPUs this machine has: one pass/fail line per part.

    lmm gpu-check [--devices N] [--out experiments/bench/gpu_check.json]   (make gpu-check)

Parts (each a real `lmm train ...` (run.py) command on generated data, under NCCL and bf16):
  fsdp_recipe   pretrain on the LCS-558K miniature, then finetune (init_from the pretrain run) on the
                mix665k miniature, whose text-only ShareGPT steps make ranks diverge if anything is
                planned per rank; evaluation
  lora_fsdp     stage=lora under FSDP: trains, merges, evaluates
  packing       data.packing=true under FSDP (torch's varlen flash kernel), after checking that
                kernel against one SDPA per sample, forward and backward
  mfu           lmm bench mfu (its table is printed)
  loss          lmm bench loss --device cuda: peak memory and time of a step, model.loss=fused vs plain
Takes a few minutes on one H100; CPU-only machines are told so and nothing runs, unless `--cpu`
asks for the training parts on 2 CPU processes (how the suite checks this script's commands).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmm.core.config import REPO as ROOT
from lmm.run.directory import FINAL_WEIGHTS, RESULTS, read_results


def prepare_data(root: Path) -> None:
    """The synthetic mixture (tokenizer, evaluation split) and the converted mix665k miniature."""
    from lmm.data.convert import convert
    from lmm.data.miniature import build_mix665k, build_pretrain558k
    from lmm.data.synthetic import GenerationConfig, generate

    generate(root / "synthetic", GenerationConfig(seed=0, pretrain=96, train=240, val=24, test=48, shard_size=60))
    json_path, images, _, _ = build_mix665k(root / "mix665k_source")
    convert(json_path, images, root / "shards" / "llava_mix665k", workers=1, shard_size=2, progress=False)
    json_path, images = build_pretrain558k(root / "pretrain_source", n=24)
    convert(json_path, images, root / "shards" / "llava_pretrain", workers=1, shard_size=4, progress=False)


EVAL = "eval.benchmarks.synthetic.limit=32"  # the synthetic test split, shortened
MIX = ["data=llava_mix665k", "data.sources.sharegpt.weight=3"]  # instruction data, text-only steps frequent
MACHINE = ["trainer=gpu"]  # --cpu: 2 gloo processes in fp32, to check the commands themselves without a GPU
STEPS = {"pretrain": 20, "finetune": 20, "lora": 10}  # --cpu: 4 each (the commands, not the learning, are checked)


def run_py(root: Path, name: str, overrides: list[str], devices: int, timeout: int = 300) -> Path:
    """Run one training command; returns its run directory (raises with the output's tail on failure)."""
    cmd = [
        sys.executable,
        "run.py",
        f"name={name}",
        *MACHINE,
        f"trainer.devices={devices}",
        "strategy=fsdp",
        *([] if any(o.startswith("data=") for o in overrides) else MIX),
        "data.num_workers=1",
        "data.batch_size=4",
        "data.length_group_size=1",
        f"paths.data={root}",
        f"paths.runs={root / 'runs'}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{done.stdout[-1500:]}\n{done.stderr[-2500:]}")
    (run_dir,) = [p for p in (root / "runs" / name).iterdir() if p.is_dir()]
    for required in (FINAL_WEIGHTS, RESULTS):
        if not (run_dir / required).exists():
            raise RuntimeError(f"{run_dir} has no {required}")
    return run_dir


def fsdp_recipe(root: Path, devices: int) -> str:
    pretrain = run_py(
        root,
        "gpu_pretrain",
        ["data=llava_pretrain", "stage=pretrain", f"trainer.max_steps={STEPS['pretrain']}", "eval=none"],
        devices,
    )
    finetune = run_py(
        root,
        "gpu_finetune",
        ["stage=finetune", f"stage.init_from='{pretrain}'", f"trainer.max_steps={STEPS['finetune']}", EVAL],
        devices,
    )
    metrics = read_results(finetune)["metrics"]
    return f"{len(metrics)} metrics, e.g. vqa/exact_match={metrics.get('synthetic/vqa/exact_match')}"


def lora_fsdp(root: Path, devices: int) -> str:
    run_dir = run_py(root, "gpu_lora", ["stage=lora", f"trainer.max_steps={STEPS['lora']}", EVAL], devices)
    from safetensors import safe_open

    with safe_open(str(run_dir / FINAL_WEIGHTS), framework="pt") as weights:
        if any("lora_" in key for key in weights.keys()):
            raise RuntimeError("final.safetensors still holds LoRA adapters (not merged)")
    return "merged, evaluated"


def varlen_matches_per_sample_sdpa() -> float:
    """Max |difference| of outputs and query gradients, varlen kernel vs one SDPA per sample (bf16)."""
    from lmm.model.attention import packed_attention

    lengths = [37, 512, 5, 200]
    offsets = torch.tensor([0, *lengths], device="cuda").cumsum(0).to(torch.int32)
    q, k, v = (
        torch.randn(1, 8, sum(lengths), 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    packed = {
        "cu_seq_lens_q": offsets,
        "cu_seq_lens_k": offsets,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }
    fast, _ = packed_attention(None, q, k, v, None, **packed)
    (grad_fast,) = torch.autograd.grad(fast.float().sum(), q)
    reference, _ = packed_attention(
        None, q, k, v, None, cu_seq_lens_q=offsets.cpu()
    )  # CPU offsets: the per-sample loop
    (grad_reference,) = torch.autograd.grad(reference.float().sum(), q)
    return max(float((fast - reference).abs().max()), float((grad_fast - grad_reference).abs().max()))


def packing(root: Path, devices: int) -> str:
    difference = varlen_matches_per_sample_sdpa()
    if difference > 0.05:
        raise RuntimeError(f"varlen kernel differs from per-sample SDPA by {difference:.3g}")
    run_py(root, "gpu_packing", ["data.packing=true", "trainer.max_steps=10", "eval=none"], devices)
    return f"varlen vs per-sample SDPA: max |Δ| {difference:.2g} (bf16)"


def benchmark(root: Path, name: str, *args: str) -> dict:
    """Run `python -m lmm.bench.<name> ARGS` (its output printed); returns its result JSON."""
    out = root / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", f"lmm.bench.{name}", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    print(done.stdout[-3000:])
    if done.returncode:
        raise RuntimeError(done.stderr[-2500:])
    return json.loads(out.read_text())


def mfu(root: Path, devices: int) -> str:
    runs = benchmark(root, "mfu", "--steps", "12")["runs"]
    return "; ".join(
        f"ckpt={r['activation_checkpointing']} compile={r['compile']}: MFU {r['mfu']:.1%}" for r in runs if r.get("mfu")
    )


def loss(root: Path, devices: int) -> str:
    rows = benchmark(root, "loss", "--device", "cuda")["vocabularies"]
    return "; ".join(
        f"{name}: peak {r['step_peak_mib']['plain']:.0f} -> {r['step_peak_mib']['fused']:.0f} MiB, "
        f"time fused/plain {r['time_fused_over_plain']:.2f}"
        for name, r in rows.items()
    )


PARTS = {"fsdp_recipe": fsdp_recipe, "lora_fsdp": lora_fsdp, "packing": packing, "mfu": mfu, "loss": loss}
CPU_PARTS = ("fsdp_recipe", "lora_fsdp")  # the others need CUDA (the varlen kernel, a GPU's peak FLOPs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None, help="GPUs to use (default: all)")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--out", default="experiments/bench/gpu_check.json")
    parser.add_argument(
        "--cpu", action="store_true", help="run the training parts on 2 CPU processes (gloo, fp32): a smoke test"
    )
    args = parser.parse_args(argv)
    if args.cpu:
        MACHINE[:] = ["trainer=cpu", "strategy.param_dtype=float32"]
        STEPS.update(pretrain=4, finetune=4, lora=4)
        return check(2, [p for p in args.parts.split(",") if p in CPU_PARTS], args.out, "2 CPU processes (gloo)")
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check (the CPU paths are covered by make test)")
        return 2
    devices = args.devices or torch.cuda.device_count()
    return check(devices, args.parts.split(","), args.out, f"{devices} × {torch.cuda.get_device_name(0)}")


def check(devices: int, parts: list[str], out: str, machine: str) -> int:
    """Run `parts`, print one PASS/FAIL line each, write them to `out`; 0 when all pass."""
    print(f"gpu-check on {machine}, torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare_data(root)
        for name in parts:
            start = time.perf_counter()
            try:
                detail, ok = PARTS[name](root, devices), True
            except Exception as e:  # one failing part must not hide the others
                detail, ok = f"{type(e).__name__}: {e}", False
            seconds = time.perf_counter() - start
            results[name] = {"passed": ok, "seconds": round(seconds, 1), "detail": detail}
            print(f"{'PASS' if ok else 'FAIL'} {name} ({seconds:.0f} s): {detail}", flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"machine": machine, "devices": devices, "parts": results}, indent=2) + "\n")
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
