"""A real single-node SLURM for the tests: installed from Debian if missing, started, stopped.

Needs root (as CI and the development machines have). slurm.conf beside this file describes one
node (localhost, 2 CPUs) and one partition; there is no accounting daemon, so `sacct` is
unavailable and submitit falls back to its result files (it warns about it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

CONF = Path(__file__).with_name("slurm.conf")
PACKAGES = ["slurm-wlm", "munge"]


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def install() -> None:
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, capture_output=True, timeout=600
    )


def start() -> None:
    install()
    for folder in ("/etc/slurm", "/var/spool/slurmd", "/var/spool/slurmctld", "/var/log/slurm"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(CONF, "/etc/slurm/slurm.conf")
    stop()
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        sh("mungekey", "--create", check=False)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    for state in ("/var/spool/slurmctld", "/var/spool/slurmd"):  # no jobs or drained nodes from an earlier run
        shutil.rmtree(state, ignore_errors=True)
        Path(state).mkdir(parents=True)
    sh("su", "-s", "/bin/sh", "munge", "-c", "munged")
    sh("slurmctld", "-c")
    sh("slurmd", "-c")
    deadline = time.time() + 60
    while time.time() < deadline:
        state = sh("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"SLURM did not come up (sinfo: {state!r}); see /var/log/slurm/")


def stop() -> None:
    """Cancel every job and wait for it to end (killing slurmd under a running job drains the node).
    Without a controller there is nothing to cancel (and scancel would retry it for ~25 s)."""
    if sh("pgrep", "-x", "slurmctld", check=False).returncode == 0:
        sh("scancel", "--user=root", check=False)
        deadline = time.time() + 30
        while time.time() < deadline and sh("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)
    for daemon in ("slurmd", "slurmctld", "munged"):
        sh("pkill", "-x", daemon, check=False)
    deadline = time.time() + 30
    while time.time() < deadline and any(
        sh("pgrep", "-x", daemon, check=False).returncode == 0 for daemon in ("slurmd", "slurmctld", "munged")
    ):
        time.sleep(0.1)


def release_when_requeued(job_id: str) -> None:
    """A requeued job waits for a BeginTime in the future; start it now. Its processes are
    killed first (COMPLETING), which on a loaded 2-core machine took over a minute once."""
    deadline = time.time() + 180
    while time.time() < deadline:
        state = sh("squeue", "-h", "-j", job_id, "-o", "%T %r", check=False).stdout.strip()
        if state.startswith("PENDING"):
            sh("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
            return
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} was not requeued (squeue: {state!r})")
