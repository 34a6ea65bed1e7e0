"""Config helpers: OmegaConf resolvers used by conf/ (run directory ids) and config checks."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_RUN_ID = 120


def run_id(override_dirname: str) -> str:
    """A filesystem-safe, stable directory name for a run's overrides.

    Runs are idempotent: the same overrides give the same directory, so re-running a command
    resumes it. Slashes become '_'; over-long ids keep a readable prefix plus a hash.
    """
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+\-]", "_", override_dirname)
    if len(safe) <= MAX_RUN_ID:
        return safe
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: MAX_RUN_ID - 11]}-{digest}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id)
