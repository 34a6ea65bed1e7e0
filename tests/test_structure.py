"""The package's structure: no import cycle (lazy imports included), and every module imports on its own."""

import ast
import graphlib
import multiprocessing
import sys
from pathlib import Path

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
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in names else node.module
                            for alias in node.names}
        graph[name] = {t for t in targets if t in names and t != name and not name.startswith(f"{t}.")}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "lmm.train.train" in graph["lmm.tasks"]  # the walk sees lazy imports
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert set(order) == set(graph)


def test_layers_import_only_downwards():
    """model and data never import train, eval or the tasks; train/train.py does not import export."""
    graph = import_graph()
    upper = ("lmm.train", "lmm.eval", "lmm.export", "lmm.tasks", "lmm.ablate", "lmm.factory")
    for name, targets in graph.items():
        if name.startswith(("lmm.model", "lmm.data")):
            assert not [t for t in targets if t.startswith(upper)], name
    assert "lmm.export" not in graph["lmm.train.train"]


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


def test_every_module_imports_on_its_own():
    """Each module in a fresh process (forked before any lmm module was loaded), so no import
    depends on another module having been imported first."""
    if any(m == "lmm" or m.startswith("lmm.") for m in sys.modules):
        # This pytest process has lmm loaded: fork from a clean child interpreter instead.
        import subprocess

        code = ("import sys; sys.path.insert(0, %r); import tests.test_structure as t; t.check_all_alone()" % str(SRC.parent))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "imported alone:" in done.stdout
        return
    check_all_alone()


def check_all_alone() -> None:
    import importlib

    for heavy in ("torch", "lightning", "transformers", "transformers.models.llama.modeling_llama", "hydra", "timm", "peft",
                  "webdataset", "torchmetrics", "accelerate", "PIL.Image"):
        importlib.import_module(heavy)  # third-party imports shared by the forks: each child loads only lmm

    names = module_names()
    context = multiprocessing.get_context("fork")
    with context.Pool(2, maxtasksperchild=1) as pool:  # one module per forked child
        failures = {name: error for name, error in zip(names, pool.map(_import_alone, names, chunksize=1)) if error}
    assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())
    print(f"imported alone: {len(names)} modules")
