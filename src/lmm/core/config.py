"""Config helpers: OmegaConf resolvers used by conf/ (run directory ids) and config checks."""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path

import yaml
from omegaconf import OmegaConf

MAX_RUN_ID = 120


def run_id(override_dirname: str) -> str:
    """A filesystem-safe, stable directory name for a run's overrides.

    Runs are idempotent: the same overrides give the same directory, so re-running a command
    resumes it. Other characters (slashes, spaces) become '_' and the id gets a hash of the
    original, so `my data` and `my_data` never share a directory; over-long ids keep a readable
    prefix plus a hash.
    """
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+\-]", "_", override_dirname)
    if safe != override_dirname:
        safe = f"{safe}-{hashlib.sha1(override_dirname.encode()).hexdigest()[:10]}"
    if len(safe) <= MAX_RUN_ID:
        return safe
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: MAX_RUN_ID - 11]}-{digest}"


def slurm_tasks(devices) -> int:
    """SLURM tasks per node = trainer.devices (one process per device); "auto" is not a count."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    raise ValueError(
        f"hydra/launcher=slurm needs trainer.devices to be the number of devices per node, not {devices!r}"
    )


def slurm_gpus(accelerator: str, devices) -> int | None:
    """GPUs per node to request: the devices when training on GPUs, none on CPU."""
    return slurm_tasks(devices) if accelerator in ("gpu", "cuda") else None


REPO = Path(__file__).resolve().parents[3]  # the checkout: run.py, conf/, pretrained/
CONF = REPO / "conf"
RUN_PY = REPO / "run.py"


def known_top_level_keys() -> set[str]:
    """What conf/config.yaml defines: its own keys and its config groups (the defaults list)."""
    primary = yaml.safe_load((CONF / "config.yaml").read_text())
    groups = {next(iter(item)) for item in primary.get("defaults", []) if isinstance(item, dict)}
    return (set(primary) - {"defaults"}) | {g.split("@")[0].lstrip("/") for g in groups} | {"hydra"}


def run_name_excluded_keys() -> list[str]:
    """The overrides conf/config.yaml leaves out of a run directory's name (hydra.job.config.override_dirname)."""
    primary = yaml.safe_load((CONF / "config.yaml").read_text())
    return list(primary["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"])


def check_top_level_keys(cfg) -> None:
    """Refuse keys no part of lmm reads: `+conector=mlp` (Hydra's own hint for a typo) would
    otherwise add a key that is silently ignored, and the run trains the default connector."""
    known = known_top_level_keys()
    unknown = sorted(set(cfg) - known)
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key, known, n=1))
            else repr(key)
            for key in unknown
        ]
        raise ValueError(
            f"unknown config key(s) {', '.join(hints)}: nothing reads them; known top-level keys and groups are "
            f"{', '.join(sorted(known - {'hydra'}))}"
        )


def command_overrides() -> list[str]:
    """The command-line overrides of this run (what an ablation table groups by), if under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def abspath(path: str) -> str:
    """`${abspath:...}`: an absolute path (MLflow's file store wants one)."""
    return str(Path(path).resolve())


def repo_path(path: str) -> str:
    """`${repo_path:pretrained}`: a path inside lmm's own checkout (what ships with the code, such
    as the pretrained tiny parts), whatever the working directory."""
    return str(CONF.parent / path)


def basename(path: str) -> str:
    """`${basename:${run_dir}}`: the run directory's own name (a logger's run name)."""
    return Path(path).name


def register_resolvers() -> None:
    for name, function in (
        ("run_id", run_id),
        ("slurm_tasks", slurm_tasks),
        ("slurm_gpus", slurm_gpus),
        ("abspath", abspath),
        ("basename", basename),
        ("repo_path", repo_path),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
