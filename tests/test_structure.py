"""The package's structure: no import cycle (lazy imports included), and every module imports on its own."""

import ast
import graphlib
import multiprocessing
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> list[str]:
    names = []
    for path in sorted((SRC / "lmm").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the lmm modules it imports anywhere in its file (inside functions too: a lazy
    import that closes a cycle is still a cycle in the design)."""
    names = set(module_names())
    graph: dict[str, set[str]] = {}
    for name in names:
        path = SRC / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from lmm.eval import answer` imports the module lmm.eval.answer
                targets |= {
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in names else node.module
                    for alias in node.names
                }
        graph[name] = {t for t in targets if t in names and t != name and not name.startswith(f"{t}.")}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "lmm.train.train" in graph["lmm.commands.tasks"]  # the walk sees lazy imports
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert set(order) == set(graph)


# The layers, lowest first: a module imports only from its own layer and the ones below it. The
# tree tells the architecture: core helpers < the data path < the model < a run directory < the
# assembly layer (config -> model) < evaluation < interop with other tools < training < analysis
# of runs < benchmarks < the commands users type.
LAYERS = (
    "lmm.core",
    "lmm.data",
    "lmm.model",
    "lmm.run",
    "lmm.build",
    "lmm.eval",
    "lmm.interop",
    "lmm.train",
    "lmm.analysis",
    "lmm.bench",
    "lmm.commands",
)
# Above every layer: the package, the `lmm` console script, `python -m` entry points, and the
# former `python -m lmm.X` names (each forwards to its subcommand).
ENTRY = {"lmm", "lmm.cli", "lmm.__main__"}


def layer_of(name: str) -> int:
    if name in ENTRY or name.endswith(".__main__"):
        return len(LAYERS)
    for i, layer in enumerate(LAYERS):
        if name == layer or name.startswith(f"{layer}."):
            return i
    if name.count(".") == 1 and (SRC / Path(*name.split(".")).with_suffix(".py")).is_file():
        return len(LAYERS)  # a former `python -m` name (test_the_top_level_holds_only_entry_points)
    raise AssertionError(f"{name} is in no layer: put it in one of {LAYERS}")


def test_every_module_imports_only_its_own_layer_or_lower():
    graph = import_graph()
    upward = [
        f"{name} ({LAYERS[layer_of(name)] if layer_of(name) < len(LAYERS) else 'entry'}) imports {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_the_top_level_holds_only_entry_points():
    """Modules at the top of lmm/ are the package, the console script and the former `python -m`
    names, each a forward to its subcommand; everything else lives in its layer."""
    top = [
        name
        for name in module_names()
        if name.count(".") == 1 and name not in ENTRY and (SRC / Path(*name.split(".")).with_suffix(".py")).is_file()
    ]
    for name in top:
        path = SRC / Path(*name.split(".")).with_suffix(".py")
        assert "from lmm.cli import main" in path.read_text() and len(path.read_text().splitlines()) <= 10, name
    assert {n.split(".")[1] for n in module_names() if n.count(".") >= 2} <= {
        layer.split(".")[1] for layer in LAYERS
    } | {"__main__"}


def _import_alone(name: str) -> str | None:
    """In a forked child that has no lmm module loaded: import one module."""
    import importlib
    import traceback

    assert not [m for m in sys.modules if m == "lmm" or m.startswith("lmm.")]
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - reported to the parent
        return traceback.format_exc(limit=3)
    return None


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    """Each module in a fresh process (forked before any lmm module was loaded), so no import
    depends on another module having been imported first."""
    if any(m == "lmm" or m.startswith("lmm.") for m in sys.modules):
        # This pytest process has lmm loaded: fork from a clean child interpreter instead.
        import subprocess

        code = "import sys; sys.path.insert(0, %r); import tests.test_structure as t; t.check_all_alone()" % str(
            SRC.parent
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "imported alone:" in done.stdout
        return
    check_all_alone()


def check_all_alone() -> None:
    import importlib

    for heavy in (
        "torch",
        "lightning",
        "transformers",
        "transformers.models.llama.modeling_llama",
        "hydra",
        "timm",
        "peft",
        "webdataset",
        "torchmetrics",
        "accelerate",
        "PIL.Image",
    ):
        importlib.import_module(heavy)  # third-party imports shared by the forks: each child loads only lmm

    names = module_names()
    context = multiprocessing.get_context("fork")
    with context.Pool(2, maxtasksperchild=1) as pool:  # one module per forked child
        failures = {
            name: error for name, error in zip(names, pool.map(_import_alone, names, chunksize=1), strict=True) if error
        }
    assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())
    print(f"imported alone: {len(names)} modules")


ARCHITECTURE = SRC.parent / "docs" / "architecture.md"


def test_the_architecture_table_names_every_module_and_config_group():
    """docs/architecture.md cannot drift: its table has a row per layer (and subpackage) naming each
    of its modules, and the text names every config group."""
    import re

    text = ARCHITECTURE.read_text()
    rows = dict(re.findall(r"^\| `?([\w. ]+?)`? \| (.*) \|$", text, re.M))
    missing = []
    for name in module_names():
        if name == "lmm" or name in rows:
            continue
        parent, short = name.rsplit(".", 1)
        if parent == "lmm" or short == "__main__":
            row, word = rows["entry points"], (f"`{name}`" if name in ENTRY or short == "__main__" else f"`{short}`")
        else:
            row, word = rows.get(parent, ""), f"`{short}`"
        if word not in row:
            missing.append(name)
    assert missing == [], f"docs/architecture.md's table does not name {missing}"
    groups = sorted(p.name for p in (SRC.parent / "conf").iterdir() if p.is_dir())
    assert [g for g in groups if f"`conf/{g}`" not in text] == []
    assert [layer for layer in LAYERS if layer not in rows] == []
