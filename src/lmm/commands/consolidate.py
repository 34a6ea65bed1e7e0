"""`lmm consolidate RUN_DIR [--out FILE]`: a run's latest checkpoint (sharded or not) as one safetensors file.

It holds the model weights under LMM parameter names, as in final.safetensors. Checkpoints hold only
what training changes; the frozen weights are rebuilt from the run's saved config, as a resumed run
rebuilds them. Lightning's own consolidation CLI does not read ModelParallelStrategy checkpoints;
torch's `dcp_to_torch_save` does, and is used here.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lmm.run.directory import CHECKPOINTS, CONSOLIDATED, load_saved_config, saved_config_path
from lmm.train.checkpoint import LAST, latest_checkpoint


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The LMM's weights from a Lightning checkpoint, single-file or sharded."""
    if checkpoint.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            merged = Path(tmp) / "merged.pt"
            dcp_to_torch_save(checkpoint, merged)
            state = torch.load(merged, map_location="cpu", weights_only=True)["state_dict"]
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model."  # LMMModule.model
    return {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


def full_model_state(run_dir: Path, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's trained parameters on top of the model its run starts from (rebuilt from
    RUN_DIR/.hydra/config.yaml: pretrained weights, stage.init_from, seeded random init), LoRA
    adapters merged: the tensors final.safetensors would hold. Without a saved config, the
    trained parameters alone."""
    cfg = load_saved_config(run_dir)
    if cfg is None:
        print(
            f"[lmm] no {saved_config_path(run_dir)}: writing the checkpoint's trained parameters only "
            "(frozen weights are not in checkpoints)"
        )
        return trained
    from lmm.build.factory import build_for_stage
    from lmm.build.stage import stage_of

    model, _, _ = build_for_stage(cfg, sharded=False, main=True)
    model = stage_of(cfg).load_trained(model, trained, strict=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def consolidate(run_dir: Path, out: Path | None = None) -> Path:
    from lmm.core.save import save_weights

    checkpoint = latest_checkpoint(run_dir / CHECKPOINTS)
    if checkpoint is None:
        raise SystemExit(f"no complete checkpoint in {run_dir / CHECKPOINTS} (looked for {LAST} and {LAST}.old)")
    out = out or run_dir / CONSOLIDATED
    state = full_model_state(run_dir, model_state(checkpoint))
    save_weights(_Tensors(state), out)
    print(f"[lmm] {checkpoint} -> {out} ({len(state)} tensors, {sum(t.numel() for t in state.values()):,d} parameters)")
    return out


class _Tensors(torch.nn.Module):
    """A state dict as a module, so safetensors' save_model handles tied (shared) tensors."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.state = state

    def state_dict(self, *args, **kwargs):
        return self.state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmm consolidate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        consolidate(args.run_dir, args.out)
    except (ValueError, FileNotFoundError) as e:  # a config that names code, a missing file: one line
        raise SystemExit(f"[lmm] cannot consolidate {args.run_dir}: {type(e).__name__}: {e}") from None


if __name__ == "__main__":
    main()
