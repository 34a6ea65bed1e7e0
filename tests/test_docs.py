"""Every command the README and docs show works when pasted, as far as a test can run it here:
`lmm train` / `python run.py` commands compose (their experiments, groups and keys exist; a sweep's
first value of each axis), `lmm` subcommands exist and take the options shown, `make` targets exist.
What they train is trained at a tiny size by the tests tests/test_makefile.py names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lmm import cli
from tests.conftest import compose_config
from tests.makefile import ROOT, composable_overrides, targets

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
# What a page's commands assume that the page itself builds: adding_a_connector.md's steps add
# connector=avgpool (tests/model/test_tutorial.py follows them); its commands are checked with a
# shipped connector in its place.
ASSUMED = {"adding_a_connector.md": ("connector=avgpool", "connector=linear")}


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's ```bash blocks: continuation lines joined, comments dropped, `&&` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def check(command: str) -> None:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # an environment variable before the command
        words = words[1:]
    if words[:2] == ["python", "run.py"] or words[:2] == ["lmm", "train"]:
        compose_config(composable_overrides(words[2:]))
    elif words[0] == "lmm":
        assert words[1] in cli.SUBCOMMANDS, f"no subcommand lmm {words[1]}"
        options = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
        if options:
            shown = help_text(words[1:3] if words[1] == "bench" else words[1:2])
            assert [o for o in options if o not in shown] == [], f"{command}: options lmm --help does not list"
    elif words[0] == "make":
        assert words[1] in targets(), f"no make target {words[1]}"
    elif words[0] in ("lmms-eval", "source", "hf", "pip", "cp", "ls"):
        return  # another tool's command
    else:
        raise AssertionError(f"a command the docs test does not know how to check: {command}")


def help_text(subcommand: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.run(subcommand[0], [*subcommand[1:], "--help"])
    return out.getvalue()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shown_command_works_pasted(page):
    commands = shell_commands(page)
    if page.name in ASSUMED:
        commands = [c.replace(*ASSUMED[page.name]) for c in commands]
    failures = []
    for command in commands:
        try:
            check(command)
        except Exception as e:  # noqa: BLE001 - each failure is reported with its command
            failures.append(f"{command}\n    {type(e).__name__}: {str(e)[:300]}")
    assert failures == [], "\n".join(failures)


def test_the_readme_shows_commands():
    assert len(shell_commands(ROOT / "README.md")) >= 20
