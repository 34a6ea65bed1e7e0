"""The Makefile's targets as the commands they run (`make -n`), so a test runs a target's own command
line at a tiny size, in this process (a refactor that breaks a target's command fails a test)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def targets() -> list[str]:
    """Every target the Makefile defines for users (not the install stamps)."""
    return re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M)


def target_commands(target: str, **variables: str) -> list[list[str]]:
    """The shell commands `make TARGET VAR=value ...` would run, as argument lists (prerequisites included)."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target, *(f"{key}={value}" for key, value in variables.items())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [shlex.split(line) for line in done.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def lmm_commands(target: str, **variables: str) -> list[list[str]]:
    """The `lmm ...` commands of a target: each one's arguments after `lmm`."""
    return [command[1:] for command in target_commands(target, **variables) if Path(command[0]).name == "lmm"]


def run_target(target: str, **variables: str):
    """Run a target's one `lmm` subcommand in this process (lmm.cli.run); its main()'s result."""
    from lmm import cli

    (command,) = lmm_commands(target, **variables)
    assert command[0] != "train", f"{target}: `lmm train` replaces the process; compose its overrides instead"
    return cli.run(command[0], command[1:])


def composable_overrides(arguments: list[str]) -> list[str]:
    """A `lmm train` command's overrides as one composed run: a sweep's `-m` and Hydra's launcher
    settings apart, and the first value of each swept axis."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for text in arguments:
        if text == "-m" or text.startswith(("hydra/", "hydra.")):
            continue
        override = parser.parse_override(text)
        if override.is_sweep_override():
            text = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
        out.append(text)
    return out
