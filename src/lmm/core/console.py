"""What a run prints: each log line once, no advertising, and no warning we have checked is harmless.

Called once per process by lmm.commands.tasks before any task runs (every rank runs it: each is a run.py).
Each filter names its source and why it is safe to drop; anything else still shows.
"""

from __future__ import annotations

import logging
import warnings


class _DropTip(logging.Filter):
    """Lightning prints a "💡 Tip" to install its cloud logger (litlogger) on every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def setup() -> None:
    import importlib

    importlib.import_module("lightning")  # its import adds the handler removed below

    # Lightning adds its own stderr handler to the `lightning` logger when it is imported, and
    # lets records propagate too; under Hydra the root logger prints them (and writes the job's
    # log file), so every Lightning INFO line appeared twice.
    package = logging.getLogger("lightning")
    for handler in list(package.handlers):
        if type(handler) is logging.StreamHandler:
            package.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTip())
    # Lightning 2.6's pytree helper builds torch's deprecated LeafSpec; the replacement is
    # Lightning's to make, and nothing changes for us when it does.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # lmm reaches SLURM through hydra/launcher=slurm (submitit starts each task under srun); a
    # run started by hand on a machine that has SLURM installed is a local run, as intended.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # FSDP2 warns that a connector unit returns a view (nn.Linear on [I, N, D] reshapes a 2-D
    # matmul): an in-place op on it would skip FSDP's pre-backward hook. LMM.embed only reads
    # the connector's output (.to(), masked_scatter: both out of place), so no hook is lost.
    warnings.filterwarnings(
        "ignore", message=r"FSDP2-wrapped module \(FSDP\w*Connector\) returned a view tensor", category=UserWarning
    )
    # The LightningModule keeps the frozen parts (tower, a frozen LLM) in eval mode on purpose
    # (lmm.train.module: no dropout or batch-norm updates in what does not learn), so Lightning's
    # count of modules in eval mode at the start of training is what lmm asked for.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # transformers draws a "Loading weights" bar for every from_pretrained (twice a stage: tower
    # and LLM); lmm reads only local files, in seconds, and says what it loaded in its own lines.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # matplotlib logs "generated new fontManager" at INFO the first time it runs on a machine,
    # and Hydra prints INFO: a cache being built is not about the run.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
