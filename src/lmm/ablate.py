"""Summarise sweeps as ablation tables: runs in, Markdown / LaTeX / CSV / PNG out.

    python -m lmm.ablate experiments/runs/<sweep> [more dirs or globs] [--rows connector,llm]
        [--metrics synthetic/vqa/exact_match,...] [--out DIR] [--decimals 3] [--rename old=new ...]

A run is a directory with Hydra's `.hydra/overrides.yaml`; its metrics come from `results.json`.
Rows are the factors that vary across runs (or `--rows`); seeds are never a row: runs that differ
only in `seed` are aggregated into mean ± std with n. Runs that failed, are still running or lack
a metric are shown as such ("—" and a footnote), never dropped; a row with fewer seeds than the
others is marked. The best value of each column is bold (lowest for metrics named like a loss).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SEED_KEYS = {"seed"}
IGNORED_KEYS = {"paths.runs", "paths.data", "trainer.enable_progress_bar", "data.num_workers", "force", "name", "sweep"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    status: str  # finished | failed | incomplete
    metrics: dict[str, float] = field(default_factory=dict)


def _status(path: Path) -> str:
    if (path / "results.json").exists():
        return "finished"
    log = path / "run.log"
    if log.exists() and ("Traceback" in log.read_text(errors="replace") or "Error executing job" in log.read_text(errors="replace")):
        return "failed"
    return "incomplete"


def find_runs(paths: list[str]) -> list[Run]:
    """Every run directory at or below the given paths (globs allowed)."""
    found: dict[Path, Run] = {}
    for pattern in paths:
        for root in [Path(p) for p in sorted(glob.glob(pattern))] or [Path(pattern)]:
            for overrides_file in sorted(root.glob("**/.hydra/overrides.yaml")):
                run_dir = overrides_file.parent.parent
                items = yaml.safe_load(overrides_file.read_text()) or []
                overrides = dict(item.lstrip("+~").split("=", 1) for item in items if "=" in item)
                status = _status(run_dir)
                metrics = json.loads((run_dir / "results.json").read_text()).get("metrics", {}) if status == "finished" else {}
                found[run_dir] = Run(run_dir, overrides, status, metrics)
    if not found:
        raise SystemExit(f"no runs (directories with .hydra/overrides.yaml) under {', '.join(paths)}")
    return list(found.values())


def varying_factors(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.overrides} - SEED_KEYS - IGNORED_KEYS)
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int


@dataclass
class Table:
    factors: list[str]
    metrics: list[str]
    rows: list[tuple[str, ...]]
    cells: dict[tuple[tuple[str, ...], str], Cell]
    runs_per_row: dict[tuple[str, ...], list[Run]]
    notes: list[str]


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "perplexity" in metric or metric.endswith("error")


def build_table(runs: list[Run], rows: list[str] | None = None, metrics: list[str] | None = None) -> Table:
    factors = rows or varying_factors(runs)
    metrics = metrics or sorted({m for r in runs for m in r.metrics})
    grouped: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        grouped.setdefault(tuple(run.overrides.get(f, "—") for f in factors), []).append(run)
    cells, notes = {}, []
    most = max(len(v) for v in grouped.values())
    for key, members in sorted(grouped.items()):
        for metric in metrics:
            values = [r.metrics[metric] for r in members if metric in r.metrics]
            mean = sum(values) / len(values) if values else None
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
            cells[(key, metric)] = Cell(mean, std, len(values))
        label = ", ".join(f"{f}={v}" for f, v in zip(factors, key)) or "all runs"
        for run in members:
            if run.status != "finished":
                notes.append(f"{label}: run {run.path.name} {run.status}")
        if len(members) < most:
            notes.append(f"{label}: {len(members)} run(s), fewer than the {most} of other rows")
    return Table(factors, metrics, sorted(grouped), cells, grouped, notes)


def _best(table: Table, metric: str) -> float | None:
    means = [table.cells[(row, metric)].mean for row in table.rows if table.cells[(row, metric)].mean is not None]
    if not means:
        return None
    return min(means) if lower_is_better(metric) else max(means)


def _format(cell: Cell, decimals: int) -> str:
    if cell.mean is None:
        return "—"
    text = f"{cell.mean:.{decimals}f}"
    return text + (f" ± {cell.std:.{decimals}f}" if cell.std is not None else "")


def markdown(table: Table, decimals: int = 3, names: dict[str, str] | None = None) -> str:
    names = names or {}
    header = [*table.factors, "n", *[names.get(m, m) for m in table.metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(table.factors) + "---:|" + "---:|" * len(table.metrics)]
    for row in table.rows:
        n = len(table.runs_per_row[row])
        values = []
        for metric in table.metrics:
            cell, best = table.cells[(row, metric)], _best(table, metric)
            text = _format(cell, decimals)
            values.append(f"**{text}**" if cell.mean is not None and best is not None and round(cell.mean, decimals) == round(best, decimals) else text)
        lines.append("| " + " | ".join([*row, str(n), *values]) + " |")
    if table.notes:
        lines += ["", *[f"- {note}" for note in table.notes]]
    lines += ["", "Mean ± sample std over seeds; n = runs per row; best per column in bold; — = no value."]
    return "\n".join(lines) + "\n"


def latex(table: Table, decimals: int = 3, names: dict[str, str] | None = None) -> str:
    names = names or {}
    escape = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    cols = "l" * len(table.factors) + "r" * (1 + len(table.metrics))
    out = [r"\begin{tabular}{" + cols + "}", r"\toprule",
           " & ".join(escape(h) for h in [*table.factors, "n", *[names.get(m, m) for m in table.metrics]]) + r" \\", r"\midrule"]
    for row in table.rows:
        values = []
        for metric in table.metrics:
            cell, best = table.cells[(row, metric)], _best(table, metric)
            text = "--" if cell.mean is None else f"{cell.mean:.{decimals}f}" + (f" $\\pm$ {cell.std:.{decimals}f}" if cell.std is not None else "")
            is_best = cell.mean is not None and best is not None and round(cell.mean, decimals) == round(best, decimals)
            values.append(r"\textbf{" + text + "}" if is_best else text)
        out.append(" & ".join([*(escape(v) for v in row), str(len(table.runs_per_row[row])), *values]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def csv_text(table: Table) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*table.factors, "n", *[f"{m}{s}" for m in table.metrics for s in ("_mean", "_std", "_n")]])
    for row in table.rows:
        cells = [table.cells[(row, m)] for m in table.metrics]
        writer.writerow([*row, len(table.runs_per_row[row]), *[x for c in cells for x in ("" if c.mean is None else repr(round(c.mean, 6)),
                                                                                        "" if c.std is None else repr(round(c.std, 6)), c.n)]])
    return buffer.getvalue()


def plot(table: Table, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [", ".join(row) or "all" for row in table.rows]
    cells = [table.cells[(row, metric)] for row in table.rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels)), 3.2))
    ax.bar(labels, [c.mean or 0 for c in cells], yerr=[c.std or 0 for c in cells], capsize=4, color="#4c72b0")
    ax.set_title(metric)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep directories or globs of run directories")
    parser.add_argument("--rows", help="comma-separated factors (default: the overrides that vary)")
    parser.add_argument("--metrics", help="comma-separated metric names (default: all)")
    parser.add_argument("--out", help="output directory (default: the first path)")
    parser.add_argument("--decimals", type=int, default=3)
    parser.add_argument("--rename", nargs="*", default=[], help="metric renames, old=new")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    table = build_table(runs, args.rows.split(",") if args.rows else None, args.metrics.split(",") if args.metrics else None)
    names = dict(item.split("=", 1) for item in args.rename)
    out = Path(args.out or args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(markdown(table, args.decimals, names))
    (out / "ablation.tex").write_text(latex(table, args.decimals, names))
    (out / "ablation.csv").write_text(csv_text(table))
    for metric in table.metrics:
        plot(table, metric, out / f"ablation_{metric.replace('/', '_')}.png")
    print(markdown(table, args.decimals, names))
    print(f"[lmm] tables and plots written to {out}")
    return table


if __name__ == "__main__":
    main()
