"""The run directory: its layout (every module names its files through here), who holds it (a
lock), what it is (the fingerprint of its resolved config), and whether it finished (one status
file, written last and atomically).

    RUN_DIR/.hydra/               config.yaml (the composed config), overrides.yaml, hydra.yaml (Hydra)
    RUN_DIR/run.lock              held (flock) by the process training it; says pid, host, SLURM job
    RUN_DIR/run.json              the resolved config and its fingerprint, written when the run starts
    RUN_DIR/run.log               the [lmm] lines and errors of every command run in it (lmm.run.log)
    RUN_DIR/checkpoints/          last.ckpt (and last.ckpt.old while a new one is committed)
    RUN_DIR/tb/                   TensorBoard logs
    RUN_DIR/final.safetensors     the trained model (LoRA merged), written when training ends
    RUN_DIR/results.json          the run, its training cost, per-benchmark and flat metrics
    RUN_DIR/predictions/          <benchmark>.jsonl: one line per question answered
    RUN_DIR/status.json           {"status": "running" | "finished" | "failed", ...}: "finished" is written
                                  after final.safetensors and results.json, so it means both exist
    RUN_DIR/export_<format>/      task=export's default output
    RUN_DIR/consolidated.safetensors   `lmm consolidate RUN_DIR`'s default output
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from lmm.core.safe_config import check_config
from lmm.core.upgrade import upgrade_config

LOCK, IDENTITY, STATUS, RUN_LOG = "run.lock", "run.json", "status.json", "run.log"
FINAL_WEIGHTS, RESULTS, CONSOLIDATED = "final.safetensors", "results.json", "consolidated.safetensors"
CHECKPOINTS, PREDICTIONS, TENSORBOARD = "checkpoints", "predictions", "tb"
HYDRA_DIR = ".hydra"
# Keys that cannot change what a run trains or scores: where things are written, how it is shown.
# Where a run writes, how it shows progress, what it logs to, and task=simulate's settings.
# data.plan changes how the plan is read (shard indexes or tar bytes), never the plan (tests/data/test_mixture.py);
# model.loss how the loss is computed, not its value (equal within 1e-5 in fp32, tests/model/test_loss.py).
NOT_IDENTITY = (
    "run_dir",
    "paths.runs",
    "force",
    "run_lock_wait_s",
    "trainer.enable_progress_bar",
    "data.num_workers",
    "name",
    "logger",
    "simulate",
    "data.plan",
    "model.loss",
    "llm.finetune_lr",  # it only feeds stage.optim.lr, which the identity holds resolved (added after some runs)
)
# How the global batch is laid out over devices: a run may resume with another layout of the same
# global batch (the global batch plan makes the data and the updates the same), so these are left
# out of the identity and the global batch itself is in it.
LAYOUT = ("trainer.devices", "trainer.num_nodes", "data.batch_size", "trainer.accumulate_grad_batches")


class RunDirectoryInUse(RuntimeError):
    """Another process holds the run directory."""


class RunMismatch(RuntimeError):
    """The run directory belongs to a run with another config."""


def write_json(path: Path, value: dict) -> None:
    """Write under a temporary name, then rename: readers see the old file or the new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class RunLock:
    """An exclusive lock on a run directory for the life of this process (released by the OS if
    it dies, so a lock is never stale). A second process is told who holds it; with
    `wait_s` > 0 it waits that long first (a requeued SLURM job while the old one checkpoints)."""

    def __init__(self, run_dir: Path, wait_s: float = 0.0, announce: bool = True):
        """`announce=False`: take the lock without writing who holds it (announce() once the
        command is accepted, so that a refused one changes nothing in the directory)."""
        self.path, self.wait_s, self.file, self.announced = Path(run_dir) / LOCK, wait_s, None, announce

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.file.seek(0)
                    owner = self.file.read().strip() or "another process"
                    self.file.close()
                    raise RunDirectoryInUse(
                        f"{self.path.parent} is being trained by {owner}; wait for it to end "
                        "(or stop it), or set run_lock_wait_s=SECONDS to wait"
                    ) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        if self.announced:
            self.announce()
        return self

    def announce(self) -> None:
        """Write who holds the lock (what a second process is told)."""
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps(holder()) + "\n")
        self.file.flush()
        self.announced = True

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def batch_layout(cfg: DictConfig) -> dict | None:
    """{"global_batch", "devices", "per_device", "accumulation"} of a config, or None if it has no valid one
    (preflight says why)."""
    from lmm.run.plan import accumulation, world_size

    try:
        world, per_device = world_size(cfg.trainer), int(cfg.data.batch_size)
        accumulate = accumulation(
            cfg.stage.get("global_batch_size"), per_device, world, int(cfg.trainer.get("accumulate_grad_batches", 1))
        )
    except (ValueError, TypeError):
        return None
    return {
        "global_batch": per_device * world * accumulate,
        "devices": world,
        "per_device": per_device,
        "accumulation": accumulate,
    }


def identity_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys that cannot change the result; the global batch in
    place of its layout over devices."""
    resolved = _without(OmegaConf.to_container(cfg, resolve=True), NOT_IDENTITY + LAYOUT)
    layout = batch_layout(cfg)
    resolved["global_batch"] = layout["global_batch"] if layout else None
    return resolved


def _without(resolved: dict, keys: tuple[str, ...]) -> dict:
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node = resolved
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return resolved


def legacy_identity_config(cfg: DictConfig) -> dict:
    """The identity as runs recorded it before the layout left it (devices and batch size in it)."""
    return _without(OmegaConf.to_container(cfg, resolve=True), NOT_IDENTITY)


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, name = old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{name}.")
        elif a != b:
            lines.append(f"{name}: {a!r} -> {b!r}")
    return lines


def save_run_config(run_dir: Path, cfg: DictConfig, replace: bool = False) -> None:
    """The command's config as Hydra would save it (.hydra/config.yaml unresolved, overrides.yaml,
    hydra.yaml), written by lmm once the command is accepted (Hydra's own writing is off:
    `hydra.output_subdir: null`), and only if the run has none yet (`replace`: force=true).
    Without a Hydra app (a test calling train()) nothing is written, as before."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    folder = Path(run_dir) / HYDRA_DIR
    if (folder / "config.yaml").exists() and not replace:
        return
    folder.mkdir(parents=True, exist_ok=True)
    hydra = HydraConfig.get()
    files = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})),
        "overrides.yaml": yaml.safe_dump(list(hydra.overrides.task)),
    }
    for name, text in files.items():
        tmp = folder / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)


def data_manifest_sha256(cfg: DictConfig) -> str | None:
    """The fingerprint of the training data's manifest.json (None while the data does not exist
    yet): the sha256 of its text as lmm writes it, without the shard indexes' sizes, so that
    indexing a data root (`lmm index`) does not read as other data."""
    root = str(OmegaConf.select(cfg, "data.root", default="") or "")
    path = Path(root) / "manifest.json"
    if not root or "://" in root or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:  # not JSON: its bytes are what identify it
        return hashlib.sha256(path.read_bytes()).hexdigest()
    for records in (manifest.get("shard_info") or {}).values():
        for record in records.values():
            if isinstance(record, dict):
                record.pop("index_bytes", None)
    return hashlib.sha256((json.dumps(manifest, indent=2) + "\n").encode()).hexdigest()


def claim_identity(run_dir: Path, cfg: DictConfig) -> None:
    """Record this run's config (and its data's manifest fingerprint) in a new run directory, or
    check them against the ones recorded: a directory is never resumed, or reported finished,
    for a different config or on regenerated or reconverted data."""
    config = identity_config(cfg)
    path = Path(run_dir) / IDENTITY
    data = data_manifest_sha256(cfg)
    if path.exists():
        record = json.loads(path.read_text())
        # A class or key that moved since is the same; a key left out of identities since is left out here too.
        recorded = _without(upgrade_config(record["config"]), NOT_IDENTITY)
        current = (
            config if "global_batch" in recorded else legacy_identity_config(cfg)
        )  # an older run: compared as then
        if fingerprint(recorded) != fingerprint(current):
            diff = differences(recorded, current)
            raise RunMismatch(
                f"{run_dir} holds a run with a different config ({'; '.join(diff[:8])}"
                f"{'; ...' if len(diff) > 8 else ''}); use another name=, or force=true to replace that run"
            )
        trained_on = record.get("data_manifest_sha256")
        if trained_on and data and trained_on != data:
            raise RunMismatch(
                f"{run_dir} was trained on other data: {cfg.data.root}/manifest.json has changed since "
                f"(sha256 {trained_on[:12]}... -> {data[:12]}...; regenerated or reconverted); use another name=, "
                "or force=true to train this run again on the new data"
            )
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, {"fingerprint": fingerprint(config), "config": config, "data_manifest_sha256": data})


def record_data(run_dir: Path, cfg: DictConfig) -> None:
    """Once the data exists (a synthetic mixture generated on first use), the run records its
    manifest's fingerprint if it could not when it started."""
    path = Path(run_dir) / IDENTITY
    record = json.loads(path.read_text()) if path.exists() else None
    if record is not None and not record.get("data_manifest_sha256"):
        record["data_manifest_sha256"] = data_manifest_sha256(cfg)
        write_json(path, record)


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / STATUS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def set_status(run_dir: Path, status: str, **details) -> None:
    write_json(Path(run_dir) / STATUS, {"status": status, "task": "train", **holder(), **details})


def finished(run_dir: Path) -> bool:
    """One definition: status.json says so (written last, after final.safetensors and
    results.json, which must still be there); runs from before status.json count when both are."""
    status = read_status(run_dir).get("status", "finished")
    return status == "finished" and (Path(run_dir) / FINAL_WEIGHTS).exists() and (Path(run_dir) / RESULTS).exists()


def saved_config_path(run_dir: Path) -> Path:
    """The composed config Hydra saved when the run started."""
    return Path(run_dir) / HYDRA_DIR / "config.yaml"


SAVED_HYDRA = "saved_hydra"  # where load_saved_config puts the run's own Hydra settings


def load_saved_config(run_dir: Path) -> DictConfig | None:
    """The config the run was trained with (its resolvers registered), or None if Hydra saved none.

    Hydra saves the config unresolved, and `${hydra:...}` (e.g. a recipe's `stage.init_from`,
    which names the pretrain run by this run's overrides) only resolves inside the Hydra app
    that ran it. Here those references point at the run's own .hydra/hydra.yaml instead, so
    they resolve in any process to what they meant when the run started."""
    from lmm.core.config import register_resolvers

    path = saved_config_path(run_dir)
    if not path.exists():
        return None
    register_resolvers()
    cfg = OmegaConf.load(path)
    check_config(OmegaConf.to_container(cfg, resolve=False), str(path))  # data, never code: before anything reads it
    cfg = OmegaConf.create(upgrade_config(OmegaConf.to_container(cfg, resolve=False)))
    hydra = saved_hydra_config(run_dir)
    if hydra is None:
        return cfg
    cfg = OmegaConf.create(_point_at_saved_hydra(OmegaConf.to_container(cfg, resolve=False)))
    cfg[SAVED_HYDRA] = _point_at_saved_hydra(OmegaConf.to_container(hydra, resolve=False))
    return cfg


def _point_at_saved_hydra(value):
    if isinstance(value, dict):
        return {k: _point_at_saved_hydra(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_point_at_saved_hydra(v) for v in value]
    if not isinstance(value, str):
        return value
    return value.replace("${hydra:", "${" + SAVED_HYDRA + ".").replace("${hydra.", "${" + SAVED_HYDRA + ".")


def saved_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides the run was launched with, or None if it has no .hydra/."""
    path = Path(run_dir) / HYDRA_DIR / "overrides.yaml"  # plain strings: an override may hold ${...} text
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else None


def saved_hydra_config(run_dir: Path) -> DictConfig | None:
    """Hydra's own settings for the run (.hydra/hydra.yaml): the parts a saved config refers to
    (`runtime`, `job`), checked as data; None without the file."""
    path = Path(run_dir) / HYDRA_DIR / "hydra.yaml"
    if not path.exists():
        return None
    hydra = OmegaConf.load(path).hydra
    kept = OmegaConf.create({key: hydra[key] for key in ("runtime", "job") if key in hydra})
    check_config(OmegaConf.to_container(kept, resolve=False), str(path))
    return kept


def read_results(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RESULTS
    return json.loads(path.read_text()) if path.exists() else None


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def export_dir(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / f"export_{fmt}"


def rerun_command(task: str, run_dir: Path, overrides: tuple[str, ...] = ()) -> str:
    """The shell command that runs `task` (eval, export) on `run_dir`: what a finished run prints."""
    import shlex

    return " ".join(["lmm", task, shlex.quote(str(run_dir)), *map(shlex.quote, overrides)])
