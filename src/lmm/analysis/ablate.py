"""Summarise sweeps as ablation tables: runs in, Markdown / LaTeX / CSV / PNG out.

    lmm ablate experiments/runs/<sweep> [more dirs or globs] [--rows connector,llm]
        [--metrics synthetic/vqa/exact_match,...] [--out DIR] [--decimals 3] [--rename old=new ...]
        [--order linear mlp ...] [--label mlp="2-layer MLP" ...] [--spec recipe.yml]
        [--match flops|tokens|visual-tokens|steps]

A run is a directory with Hydra's `.hydra/overrides.yaml`; its metrics come from `results.json`.
Rows are the factors that vary across runs (or `--rows`); seeds are never a row: runs that differ
only in `seed` are aggregated into mean ± std with n. Runs that failed, are still running or lack
a metric are shown as such ("—" and a footnote), never dropped; a row with fewer seeds than the
others is marked. The best value of each column is bold (lowest for metrics named like a loss).
Cost columns (trainable parameters, visual tokens per image, tokens seen, training time, FLOPs) come from each run's
`results.json` "cost" when present.

`--spec` gives the "recipe steps" layout of LLaVA-1.5's Table 2: a YAML file lists the rows as
named experiments (cumulative config deltas) in order, and the columns to show:

    row_header: Recipe
    rows:
      - {label: LLaVA, experiment: llava15_table2/r01_llava}
      - {label: +VQA-v2, experiment: llava15_table2/r02_vqav2}
    columns: {vqav2/accuracy: VQAv2, gqa/accuracy: GQA}

A run belongs to the row whose experiment it was launched with (`experiment=` in its overrides).

`--match` makes a compute-matched comparison explicit: every row must have trained with the same
FLOPs, tokens, visual tokens per image or steps (lmm.analysis.match), and the table says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from lmm.analysis import match, stats
from lmm.core.config import run_name_excluded_keys
from lmm.eval.blind import BLIND, NEEDS_VISION, QUESTION_TYPE, is_loss
from lmm.run.directory import (
    CHECKPOINTS,
    FINAL_WEIGHTS,
    HYDRA_DIR,
    PREDICTIONS,
    RESULTS,
    RUN_LOG,
    read_results,
    read_status,
    saved_hydra_config,
    saved_overrides,
)

SEED_KEYS = {"seed"}
# results.json "cost" entries shown as columns (when any run has them), with their headers.
COST_COLUMNS = {
    "trainable_parameters": "trainable params",
    "visual_tokens_per_image": "visual tokens / image",
    "tokens_seen": "tokens",
    "train_wall_s": "train time",
    "flops": "FLOPs",
}
# Keys a run directory's name leaves out (hydra.job.config.override_dirname.exclude_keys) are not
# factors, except these: `experiment` names the runs' parent directory (name=) instead.
FACTOR_KEYS = {"experiment"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    status: str  # finished | failed | incomplete
    metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    not_factors: set[str] = field(default_factory=set)  # overrides that do not make it another run (not_factors)
    # What pairs it with a run of another row: its seed, and with --rows of some factors only, the
    # values of the others too (a main effect: same design but for the row's factor, same seed).
    pairing: str | None = None
    _predictions: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")  # conf/config.yaml's default

    def question_scores(self, metric: str) -> dict[str, float] | None:
        """Per-question scores of `metric` ("<benchmark>/<key>") from predictions/<benchmark>.jsonl,
        keyed by question; None when the run saved none for it. "Needs vision" (lmm.eval.blind) is
        each question's score minus its blind score, paired by question."""
        benchmark, _, key = metric.partition("/")
        if benchmark.endswith(NEEDS_VISION):
            seen = self.question_scores(f"{benchmark.removesuffix(NEEDS_VISION)}/{key}")
            blind = self.question_scores(f"{benchmark.removesuffix(NEEDS_VISION)}{BLIND}/{key}")
            if not seen or not blind:
                return None
            return {q: seen[q] - blind[q] for q in seen if q in blind} or None
        if benchmark not in self._predictions:
            path = self.path / PREDICTIONS / f"{benchmark}.jsonl"
            records = []
            if path.exists():
                for line in path.read_text().splitlines():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a torn line: the question is left out, the others count
            self._predictions[benchmark] = records
        qtype = key.removeprefix(f"{QUESTION_TYPE}/") if key.startswith(f"{QUESTION_TYPE}/") else None
        scores = {
            f"{r.get('id')}#{r.get('turn', 0)}": float(r["score"])
            for r in self._predictions[benchmark]
            if (r.get("metric") == key if qtype is None else f"{r.get('source')}/{r.get('qtype')}" == qtype)
            and isinstance(r.get("score"), (int, float))
        }
        return scores or None

    def scores(self, metric: str) -> stats.RunScores:
        return stats.RunScores(self.pairing or self.seed, self.metrics[metric], self.question_scores(metric))


NOT_STARTED = "not started"


def never_trained(path: Path, status: str) -> bool:
    """A directory left by a command that stopped before training (a refused or mistyped config):
    failed or incomplete with no checkpoint, weights or results, and not running now."""
    return (
        status in ("failed", "incomplete")
        and read_status(path).get("status") != "running"
        and not any((path / name).exists() for name in (CHECKPOINTS, FINAL_WEIGHTS, RESULTS))
    )


def _status(path: Path) -> str:
    """The run's own status.json (lmm.run.directory: "finished" is written last); runs from before it
    existed: results.json, or a traceback in run.log."""
    recorded = read_status(path).get("status")
    if recorded == "finished":
        return "finished" if (path / RESULTS).exists() else "incomplete"
    if recorded:
        return "failed" if recorded == "failed" else "incomplete"
    if (path / RESULTS).exists():
        return "finished"
    log = path / RUN_LOG
    if log.exists() and (
        "Traceback" in log.read_text(errors="replace") or "Error executing job" in log.read_text(errors="replace")
    ):
        return "failed"
    return "incomplete"


def find_runs(paths: list[str]) -> list[Run]:
    """Every run directory at or below the given paths (globs allowed)."""
    found: dict[Path, Run] = {}
    for pattern in paths:
        for root in [Path(p) for p in sorted(glob.glob(pattern))] or [Path(pattern)]:
            for overrides_file in sorted(root.glob(f"**/{HYDRA_DIR}/overrides.yaml")):
                run_dir = overrides_file.parent.parent
                overrides = dict(item.lstrip("+~").split("=", 1) for item in saved_overrides(run_dir) if "=" in item)
                if overrides.get("task", "train") != "train" or read_status(run_dir).get("task", "train") != "train":
                    continue  # task=eval / task=export directories score or copy a run; they are not runs
                status = _status(run_dir)
                if never_trained(run_dir, status):
                    status = NOT_STARTED
                try:
                    results = (read_results(run_dir) or {}) if status == "finished" else {}
                except (
                    json.JSONDecodeError,
                    UnicodeDecodeError,
                ):  # a torn results.json: the run did not finish writing
                    status, results = "incomplete", {}
                if not isinstance(results, dict):
                    status, results = "incomplete", {}
                cost = {
                    k: v
                    for k, v in (results.get("cost") or {}).items()
                    if (k in COST_COLUMNS or k in match.COST_KEYS) and v is not None
                }
                if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in cost.values()):
                    status, results, cost = "incomplete", {}, {}  # a damaged cost: the run is footnoted, not summed
                found[run_dir] = Run(run_dir, overrides, status, results.get("metrics", {}), cost, not_factors(run_dir))
    if not found:
        raise SystemExit(f"no runs (directories with .hydra/overrides.yaml) under {', '.join(paths)}")
    return list(found.values())


def not_factors(run_dir: Path) -> set[str]:
    """The keys the run's own Hydra config left out of its directory name (where things are
    written, how progress is shown), from its .hydra/hydra.yaml, or conf/config.yaml's list for
    runs without one."""
    hydra = saved_hydra_config(run_dir)
    if hydra is not None:
        excluded = OmegaConf.select(hydra, "job.config.override_dirname.exclude_keys", default=[])
    else:
        excluded = run_name_excluded_keys()
    return set(excluded) - FACTOR_KEYS


def varying_factors(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.overrides} - SEED_KEYS - set().union(*(r.not_factors for r in runs)))
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int
    partial: bool = False  # fewer values than the row's finished runs: shown with its n, never bold
    interval: stats.Interval | None = None  # 95% interval of the mean (lmm.analysis.stats)


@dataclass
class Table:
    factors: list[str]  # the row-header columns
    metrics: list[str]
    rows: list[tuple[str, ...]]  # in display order
    cells: dict[tuple[tuple[str, ...], str], Cell]
    runs_per_row: dict[tuple[str, ...], list[Run]]
    notes: list[str]
    costs: list[str] = field(default_factory=list)  # COST_COLUMNS keys present in some run
    references: dict[tuple[str, ...], tuple[str, ...]] = field(
        default_factory=dict
    )  # row -> the row it is compared with
    comparisons: dict[tuple[tuple[str, ...], str], stats.Comparison] = field(default_factory=dict)  # (row, metric)
    reference_text: str = ""  # how the footnote names the reference ("linear", "the row above")
    untested: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)  # (row, metric, why no test)
    held_equal: str = ""  # --match: what every row trained with the same amount of (lmm.analysis.match)


def default_metrics(runs: list[Run]) -> list[str]:
    """Every metric of the runs but the per-question-type ones (`.../qtype/...`: ask for them with --metrics)."""
    return sorted({m for r in runs for m in r.metrics if f"/{QUESTION_TYPE}/" not in m})


def lower_is_better(metric: str) -> bool:
    return is_loss(metric) or metric.endswith("error")


def _aggregate(values: list[float]) -> Cell:
    if not values:
        return Cell(None, None, 0)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Cell(mean, std, len(values))


def _table(
    factors: list[str],
    metrics: list[str],
    groups: dict[tuple[str, ...], list[Run]],
    notes: list[str],
    references: dict[tuple[str, ...], tuple[str, ...]] | None = None,
    reference_text: str = "",
    effect: float | None = None,
) -> Table:
    """Aggregate each group's runs (seeds) per metric and cost, with intervals and comparisons
    against each row's reference (lmm.analysis.stats); footnote unfinished runs and short rows."""
    runs = [r for members in groups.values() for r in members]
    costs = [c for c in COST_COLUMNS if any(c in r.cost for r in runs)]
    cells = {}
    most = max((len(v) for v in groups.values()), default=0)
    for key, members in groups.items():
        done = sum(1 for r in members if r.status == "finished")
        for metric in metrics:
            cell = _aggregate([r.metrics[metric] for r in members if metric in r.metrics])
            cell.partial = 0 < cell.n < done
            values = [r.metrics[metric] for r in members if metric in r.metrics]
            cell.interval = stats.within_range(
                stats.cell_interval(
                    [r.scores(metric) for r in members if metric in r.metrics], stats.generator(*key, metric)
                ),
                metric,
                values,
            )
            cells[(key, metric)] = cell
        for cost in costs:
            cells[(key, f"cost/{cost}")] = _aggregate([r.cost[cost] for r in members if cost in r.cost])
        label = ", ".join(f"{f}={v}" for f, v in zip(factors, key, strict=True)) or "all runs"
        for run in members:
            if run.status != "finished":
                notes.append(f"{label}: run {run.path.name} {run.status}")
        if not members:
            notes.append(f"{label}: not run")
        elif len(members) < most:
            notes.append(f"{label}: {len(members)} run(s), fewer than the {most} of other rows")
    comparisons, untested = {}, []
    for row, reference in (references or {}).items():
        for metric in metrics:
            have = lambda runs, metric=metric: [r.scores(metric) for r in runs if metric in r.metrics]  # noqa: E731
            comparison = stats.compare(
                have(groups[row]), have(groups[reference]), stats.generator(*row, *reference, metric)
            )
            if comparison is not None:
                comparisons[(row, metric)] = comparison
            else:
                untested.append(
                    (row, metric, f"{len(have(groups[row]))} and {len(have(groups[reference]))} seeds with a value")
                )
    stats.adjust(list(comparisons.values()), effect)
    return Table(
        factors,
        metrics,
        list(groups),
        cells,
        groups,
        notes,
        costs,
        dict(references or {}),
        comparisons,
        reference_text,
        untested,
    )


def build_table(
    runs: list[Run],
    rows: list[str] | None = None,
    metrics: list[str] | None = None,
    order: list[str] | None = None,
    baseline: str | None = None,
    effect: float | None = None,
) -> Table:
    """Rows: the distinct values of the factors (default: the overrides that vary). `order` lists
    factor values in the wanted order; rows are sorted by it, unlisted values after, alphabetically.
    Every row is compared with the `baseline` row (a factor value, or "value, value" for several
    factors; default: the first row)."""
    runs, notes = started(runs)
    factors = rows or varying_factors(runs)
    averaged = [f for f in varying_factors(runs) if f not in factors]
    if averaged:  # main effects: each row averages over these; runs pair by them and the seed
        for run in runs:
            run.pairing = ",".join(f"{f}={run.overrides.get(f, '—')}" for f in averaged) + f",seed={run.seed}"
        notes.append(
            f"each row averages over {', '.join(averaged)}; n counts runs, and every comparison pairs a run with "
            f"the run of the same {', '.join(averaged)} and seed"
        )
    metrics = metrics or default_metrics(runs)
    grouped: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        grouped.setdefault(tuple(run.overrides.get(f, "—") for f in factors), []).append(run)
    rank = {value: i for i, value in enumerate(order or [])}
    ordered = sorted(grouped, key=lambda key: [(rank.get(v, len(rank)), v) for v in key])
    reference = _baseline_row(
        ordered, baseline, {key: any(r.status == "finished" for r in grouped[key]) for key in ordered}
    )
    references = {row: reference for row in ordered if reference is not None and row != reference}
    label = ", ".join(reference) if reference else ""
    return _table(factors, metrics, {key: grouped[key] for key in ordered}, notes, references, label, effect)


def started(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """The runs that trained (rows), and a footnote line for each directory whose command stopped
    before training ("not started: reason"): never a row, never a baseline."""
    notes = [
        f"not started: {r.path.name}: {read_status(r.path).get('error') or 'stopped before training'}"
        for r in runs
        if r.status == NOT_STARTED
    ]
    kept = [r for r in runs if r.status != NOT_STARTED]
    if not kept:
        raise SystemExit("no run under these paths trained; " + "; ".join(notes[:5]))
    return kept, notes


def _baseline_row(
    rows: list[tuple[str, ...]], baseline: str | None, finished: dict[tuple[str, ...], bool]
) -> tuple[str, ...] | None:
    """The row every other row is compared with: the one --baseline names (it must have a finished
    run), or by default the first row that has one."""
    candidates = [row for row in rows if finished[row]]
    if baseline is None:
        return candidates[0] if candidates else None
    matches = [row for row in rows if ", ".join(row) == baseline or baseline in row]
    if len(matches) != 1:
        raise SystemExit(
            f"--baseline {baseline!r} names {len(matches)} rows; rows are: " + "; ".join(", ".join(row) for row in rows)
        )
    if not finished[matches[0]]:
        raise SystemExit(
            f"--baseline {baseline!r}: that row has no finished run; rows that could be the baseline: "
            + ("; ".join(", ".join(row) for row in candidates) or "none (no row has a finished run)")
        )
    return matches[0]


RECIPE = "Recipe"


@dataclass
class RecipeSpec:
    """The "recipe steps" layout: named rows, each one experiment, in order; chosen columns."""

    rows: list[tuple[str, str]]  # (label, experiment)
    columns: dict[str, str]  # metric -> header
    row_header: str = RECIPE

    @classmethod
    def load(cls, path: str | Path) -> "RecipeSpec":
        spec = yaml.safe_load(Path(path).read_text()) or {}
        try:
            rows = [(str(row["label"]), str(row["experiment"])) for row in spec["rows"]]
        except (KeyError, TypeError) as error:
            raise SystemExit(f"{path}: a spec needs `rows:` of {{label, experiment}} entries ({error!r})") from None
        columns = spec.get("columns") or {}
        if isinstance(columns, list):
            columns = {c: c for c in columns}
        return cls(rows, dict(columns), spec.get("row_header", RECIPE))


def build_recipe_table(
    runs: list[Run], spec: RecipeSpec, metrics: list[str] | None = None, effect: float | None = None
) -> tuple[Table, dict[str, str]]:
    """One row per spec row (its runs over seeds, or "not run"), each compared with the row above
    it (the step it adds); runs outside the spec are footnoted."""
    runs, not_started = started(runs)
    by_experiment = {experiment: (label,) for label, experiment in spec.rows}
    groups: dict[tuple[str, ...], list[Run]] = {(label,): [] for label, _ in spec.rows}
    outside = []
    for run in runs:
        key = by_experiment.get(run.overrides.get("experiment", ""))
        if key is None:
            outside.append(f"{run.path.name} (experiment={run.overrides.get('experiment', 'none')})")
        else:
            groups[key].append(run)
    notes = not_started + (
        [f"{len(outside)} run(s) not in the spec, left out: {', '.join(sorted(outside))}"] if outside else []
    )
    metrics = metrics or list(spec.columns) or default_metrics(runs)
    keys = list(groups)
    references = {keys[i]: keys[i - 1] for i in range(1, len(keys))}
    return _table([spec.row_header], metrics, groups, notes, references, "the row above", effect), dict(spec.columns)


def _best(table: Table, metric: str) -> float | None:
    cells = [table.cells[(row, metric)] for row in table.rows]
    means = [cell.mean for cell in cells if cell.mean is not None and not cell.partial]
    if not means:
        return None
    return min(means) if lower_is_better(metric) else max(means)


def _format(cell: Cell, decimals: int) -> str:
    """mean [95% interval] (a single seed: the mean alone), with the cell's n when it is short."""
    if cell.mean is None:
        return "—"
    text = f"{cell.mean:.{decimals}f}"
    if cell.interval is not None:
        text += f" [{cell.interval.low:.{decimals}f}, {cell.interval.high:.{decimals}f}]"
    return text + (f" (n={cell.n})" if cell.partial else "")


def _si(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_cost(cost: str, cell: Cell) -> str:
    """Costs are means over seeds, in human units: 20.9M parameters, 1.2B tokens, 3.5 min, 1.2e+15 FLOPs."""
    if cell.mean is None:
        return "—"
    if cost == "train_wall_s":
        seconds = cell.mean
        return (
            f"{seconds:.0f} s"
            if seconds < 120
            else f"{seconds / 60:.1f} min"
            if seconds < 7200
            else f"{seconds / 3600:.1f} h"
        )
    if cost == "flops":
        return f"{cell.mean:.2e}"
    if cost == "visual_tokens_per_image":  # AnyRes: a mean over the images seen
        return f"{cell.mean:.0f}"
    return _si(cell.mean)


def _rendered_rows(
    table: Table, decimals: int, bold: tuple[str, str], star: str, labels: dict[str, str]
) -> list[list[str]]:
    """Each row's cells as text: factor values (relabelled), n, metrics (best in bold, `star` where
    the row differs significantly from its reference), costs."""
    out = []
    for row in table.rows:
        values = []
        for metric in table.metrics:
            cell, best = table.cells[(row, metric)], _best(table, metric)
            text = _format(cell, decimals)
            is_best = (
                cell.mean is not None
                and not cell.partial
                and best is not None
                and round(cell.mean, decimals) == round(best, decimals)
            )
            text = f"{bold[0]}{text}{bold[1]}" if is_best else text
            comparison = table.comparisons.get((row, metric))
            values.append(text + (star if comparison is not None and comparison.significant else ""))
        costs = [format_cost(c, table.cells[(row, f"cost/{c}")]) for c in table.costs]
        out.append([*(labels.get(v, v) for v in row), str(len(table.runs_per_row[row])), *values, *costs])
    return out


def _header(table: Table, names: dict[str, str]) -> list[str]:
    return [*table.factors, "n", *[names.get(m, m) for m in table.metrics], *[COST_COLUMNS[c] for c in table.costs]]


def markdown(
    table: Table, decimals: int = 3, names: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> str:
    header = _header(table, names or {})
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(table.factors) + "---:|" * (1 + len(table.metrics) + len(table.costs)),
    ]
    for cells in _rendered_rows(table, decimals, ("**", "**"), "†", labels or {}):
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines += ["", *[f"- {note}" for note in table.notes]]
    lines += ["", footnote(table, labels or {})]
    return "\n".join(lines) + "\n"


def footnote(table: Table, labels: dict[str, str]) -> str:
    methods = sorted({cell.interval.method for cell in table.cells.values() if cell.interval is not None})
    text = (
        "Mean over seeds [95% interval: " + "; ".join(methods) + "]"
        if methods
        else "Mean over seeds (one seed: no interval)"
    )
    if table.references:
        reference = labels.get(table.reference_text, table.reference_text)
        text += (
            f"; † = differs from {reference} (paired by seed and by question where both are known, "
            "Holm-corrected p < 0.05 across the table; every comparison in ablation_summary.md)"
        )
    text += (
        "; n = runs per row (a cell's own n when fewer of them have the metric; such cells are never bold); "
        "best per column in bold; — = no value. Method: lmm.analysis.stats (docs/ablations.md)."
    )
    return text + (f" The comparison is {table.held_equal}." if table.held_equal else "")


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("—", "--")


def latex(
    table: Table, decimals: int = 3, names: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> str:
    cols = "l" * len(table.factors) + "r" * (1 + len(table.metrics) + len(table.costs))
    out = [
        r"\begin{tabular}{" + cols + "}",
        r"\toprule",
        " & ".join(_tex(h) for h in _header(table, names or {})) + r" \\",
        r"\midrule",
    ]
    width = len(table.factors) + 1
    for cells in _rendered_rows(table, decimals, (r"\textbf{", "}"), r"$^\dagger$", labels or {}):
        out.append(
            " & ".join([*(_tex(c) for c in cells[:width]), *(c.replace("—", "--") for c in cells[width:])]) + r" \\"
        )
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def csv_text(table: Table) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [*table.metrics, *[f"cost/{c}" for c in table.costs]]
    writer.writerow(
        [*table.factors, "n", *[f"{m}{s}" for m in columns for s in ("_mean", "_std", "_n", "_low", "_high")]]
    )
    number = lambda x: "" if x is None else repr(round(x, 6))  # noqa: E731
    for row in table.rows:
        cells = [table.cells[(row, m)] for m in columns]
        writer.writerow(
            [
                *row,
                len(table.runs_per_row[row]),
                *[
                    x
                    for c in cells
                    for x in (
                        number(c.mean),
                        number(c.std),
                        c.n,
                        number(c.interval and c.interval.low),
                        number(c.interval and c.interval.high),
                    )
                ],
            ]
        )
    return buffer.getvalue()


def _signed(value: float, decimals: int) -> str:
    return f"{value:+.{decimals}f}".replace("-", "−")


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.2g}"


def summary(
    table: Table, decimals: int = 3, names: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> str:
    """ablation_summary.md: one plain-words line per comparison, generated from the statistics."""
    names, labels = names or {}, labels or {}
    label = lambda row: ", ".join(labels.get(v, v) for v in row)  # noqa: E731
    lines = [
        "# What this table shows",
        "",
        f"Each row against {labels.get(table.reference_text, table.reference_text) or 'its reference'}: the difference "
        "of means [95% interval], its p-value after Holm's correction across all comparisons below, and what the "
        "seeds and questions were. Generated by lmm.analysis.ablate (method: lmm.analysis.stats); not edited by hand.",
        "",
        *([f"The comparison is {table.held_equal}.", ""] if table.held_equal else []),
    ]
    averaged = any(run.pairing for runs in table.runs_per_row.values() for run in runs)
    unit = "pairs of runs" if averaged else "seeds"  # a main effect pairs designs as well as seeds
    for (row, metric), c in table.comparisons.items():
        reference = table.references[row]
        sample = f"{c.seeds} {unit}" + (f" × {c.questions} questions" if c.questions else "")
        verdict = "shown" if c.significant else "not shown"
        if not c.significant:
            if c.seeds_needed is None:
                verdict += (
                    "; no seed count would (no spread to plan from)"
                    if c.difference == 0
                    else f"; more than {stats.MAX_SEEDS} {unit} would be needed"
                )
            elif c.seeds_needed > c.seeds:
                verdict += f"; ~{c.seeds_needed} {unit} would be needed"
        lines.append(
            f"- {label(row)} vs {label(reference)}, {names.get(metric, metric)}: {_signed(c.difference, decimals)} "
            f"[{_signed(c.low, decimals)}, {_signed(c.high, decimals)}], {_p(c.p_holm)} ({c.method}), {sample} — "
            f"{verdict}"
        )
    for row, metric, why in table.untested:
        lines.append(
            f"- {label(row)} vs {label(table.references[row])}, {names.get(metric, metric)}: no test ({why}; "
            "each side needs 2 or more)"
        )
    return "\n".join(lines) + "\n"


def plot(table: Table, metric: str, path: Path, title: str | None = None, labels: dict[str, str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    names = [", ".join(labels.get(v, v) for v in row) or "all" for row in table.rows]
    cells = [table.cells[(row, metric)] for row in table.rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.2))
    below = [c.mean - c.interval.low if c.interval and c.mean is not None else 0 for c in cells]
    above = [c.interval.high - c.mean if c.interval and c.mean is not None else 0 for c in cells]
    ax.bar(names, [c.mean or 0 for c in cells], yerr=[below, above], capsize=4, color="#4c72b0")
    for x, cell in enumerate(cells):
        if cell.mean is None:
            ax.text(x, 0, "—", ha="center", va="bottom")
    ax.set_title(title or metric)
    ax.set_ylabel(f"mean, 95% interval (seeds per bar: {', '.join(str(c.n) for c in cells)})", fontsize=7)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SystemExit(f"{option} takes old=new pairs; got {bad}")
    return dict(item.split("=", 1) for item in items)


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep directories or globs of run directories")
    parser.add_argument("--rows", help="comma-separated factors (default: the overrides that vary)")
    parser.add_argument("--metrics", help="comma-separated metric names (default: all)")
    parser.add_argument("--out", help="output directory (default: the first path)")
    parser.add_argument("--decimals", type=int, default=3)
    parser.add_argument("--rename", nargs="*", default=[], help="metric headers, metric=header")
    parser.add_argument("--order", nargs="*", default=[], help="factor values in the wanted row order")
    parser.add_argument("--label", nargs="*", default=[], help="row labels, value=label")
    parser.add_argument("--spec", help="recipe-steps layout (YAML: rows of {label, experiment}, columns)")
    parser.add_argument(
        "--baseline", help="the row every other row is compared with (a factor value; default: the first row)"
    )
    parser.add_argument("--effect", type=float, help="plan seeds for this difference instead of the observed one")
    parser.add_argument(
        "--match",
        choices=sorted(match.BUDGETS),
        help="check that every row trained with the same budget, and say so (compute-matched comparisons)",
    )
    parser.add_argument(
        "--match-tolerance", type=float, default=0.05, help="relative spread --match accepts (default 0.05)"
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    names = _pairs(args.rename, "--rename")
    labels = _pairs(args.label, "--label")
    metrics = args.metrics.split(",") if args.metrics else None
    if args.spec:
        if args.baseline:
            raise SystemExit(
                "--baseline is for the factor layout; with --spec each row is compared with the row above it"
            )
        table, spec_names = build_recipe_table(runs, RecipeSpec.load(args.spec), metrics, args.effect)
        names = {**spec_names, **names}
    else:
        table = build_table(
            runs, args.rows.split(",") if args.rows else None, metrics, args.order, args.baseline, args.effect
        )
    if args.match:
        rows = {", ".join(labels.get(v, v) for v in row) or "all runs": table.runs_per_row[row] for row in table.rows}
        table.held_equal = match.held_equal(rows, args.match, args.match_tolerance)
    out = Path(args.out or args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(markdown(table, args.decimals, names, labels))
    (out / "ablation.tex").write_text(latex(table, args.decimals, names, labels))
    (out / "ablation.csv").write_text(csv_text(table))
    (out / "ablation_summary.md").write_text(summary(table, args.decimals, names, labels))
    for metric in table.metrics:
        plot(table, metric, out / f"ablation_{metric.replace('/', '_')}.png", names.get(metric), labels)
    print(markdown(table, args.decimals, names, labels))
    print(summary(table, args.decimals, names, labels))
    print(f"[lmm] tables, summary and plots written to {out}")
    return table


if __name__ == "__main__":
    main()
