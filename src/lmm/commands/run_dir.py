"""A run directory as a plain argument: `lmm eval RUN_DIR [overrides]` and
`lmm export RUN_DIR [overrides]`.

A sweep's run directory is named by its overrides (`connector=mlp,seed=1`), which Hydra's
override grammar cannot take back unquoted (`ckpt=.../connector=mlp,seed=1` fails at the `=`).
These commands take the directory as is, and run `run.py` with the run's own overrides (so the
model is built as it was trained), `task=`, the directory quoted for Hydra, and the command's
overrides last (they replace the run's own for the same key, e.g. `eval=llava15`).
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

from lmm.core.config import RUN_PY
from lmm.core.safe_config import UntrustedConfig, check_overrides
from lmm.core.upgrade import upgrade_overrides
from lmm.run.directory import HYDRA_DIR, saved_overrides

# Overrides of the training command that are not the run's model or data: never carried over.
NOT_CARRIED = {"task", "ckpt", "force", "run_lock_wait_s", "hydra/launcher"}


def hydra_quoted(value: str) -> str:
    """`value` as a Hydra single-quoted string. Hydra reads a backslash as an escape only before
    a quote or at the end, so those are doubled; quotes and `${` (an interpolation) are escaped."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("${", "\\${") + "'"


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def task_arguments(task: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """run.py's arguments for `task` on `run_dir`: its saved overrides, then these."""
    given = {override_key(o) for o in overrides}
    replayed = saved_overrides(run_dir) or []
    check_overrides(replayed, str(run_dir / HYDRA_DIR / "overrides.yaml"))  # data, never code
    replayed = upgrade_overrides(replayed)  # keys that moved since the run was trained
    saved = [o for o in replayed if override_key(o) not in NOT_CARRIED | given]
    return [*saved, f"task={task}", f"ckpt={hydra_quoted(str(run_dir))}", *overrides]


def main(task: str, argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        sys.exit(f"usage: lmm {task} RUN_DIR [overrides ...]   (a run directory or an lmm directory)")
    run_dir = Path(argv[0])
    if not run_dir.is_dir():
        sys.exit(f"[lmm] {run_dir}: not a directory; lmm {task} takes a run directory (or an lmm directory) first")
    try:
        arguments = task_arguments(task, run_dir.resolve(), argv[1:])
    except UntrustedConfig as e:
        sys.exit(f"[lmm] UntrustedConfig: {e}")
    sys.argv = [str(RUN_PY), *arguments]
    runpy.run_path(str(RUN_PY), run_name="__main__")
