"""Statistics an ablation table needs: a 95% interval per cell, paired comparisons against a
reference row with Holm's correction, and the seeds a difference would need.

A cell's noise has two sources: the seed (initialisation, data order) and the finite test set.

- **Cell interval.** With per-question scores for every seed's run (predictions/<benchmark>.jsonl
  "score"), a hierarchical bootstrap: draw the seeds with replacement, then the questions within
  each drawn run, and average; the 2.5 and 97.5 percentiles of 4000 such draws. Without them
  (a metric that is not a mean over questions, like the description loss, or runs without
  predictions), Student's t interval over the seeds' values (scipy.stats.t).
- **Comparison** of a row with its reference, paired by seed (runs with the same `seed`) and by
  question (the questions both runs answered): the same bootstrap over seed pairs and their
  per-question differences; two-sided p = 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0)) over the draws, at least
  1/draws. Without per-question scores, a paired t-test over the seeds (scipy.stats.ttest_rel);
  without common seeds, Welch's t-test over the seeds (scipy.stats.ttest_ind). Fewer than two
  seeds per side: no test.
- **Holm's step-down correction** across every comparison of a table (rows × metrics); a
  difference is shown when its corrected p < 0.05.
- **Seeds needed**: the fewest seeds with which a two-sided paired t-test at α = 0.05 detects the
  difference (the observed one, or a given effect) with 80% power, from the spread of the
  per-seed differences (noncentral t, scipy.stats.nct).

With 3 seeds the bootstrap sees few distinct seed draws, so its intervals are narrower than the
t interval would be for the seed noise alone; both are reported by method in the footnote.
Draws come from a generator seeded per cell, so tables are reproducible.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lmm.eval.blind import NEEDS_VISION

ALPHA = 0.05
POWER = 0.8
DRAWS = 4000
MAX_SEEDS = 100

BOOTSTRAP = "bootstrap over seeds and questions"
T_SEEDS = "t over seeds"
PAIRED_T = "paired t-test over seeds"
WELCH = "Welch t-test over seeds (no common seeds)"


@dataclass
class RunScores:
    """One run's value of a metric, with its per-question scores when it wrote them."""

    seed: str
    value: float
    questions: dict[str, float] | None = None


@dataclass
class Interval:
    low: float
    high: float
    method: str


@dataclass
class Comparison:
    difference: float  # row − reference
    low: float
    high: float
    p: float
    method: str
    seeds: int  # seeds (pairs) the test used
    questions: int | None  # questions per seed pair (their mean), when paired by question
    seed_differences: list[float]  # per seed pair, or per seed mean difference (Welch)
    p_holm: float | None = None
    seeds_needed: int | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def generator(*names: str) -> np.random.Generator:
    """A generator seeded by the cell's names: the same table gives the same intervals."""
    return np.random.default_rng(zlib.crc32("/".join(names).encode()))


def _hierarchical_means(arrays: list[np.ndarray], rng: np.random.Generator, draws: int) -> np.ndarray:
    """[draws] means: seeds drawn with replacement, then each drawn run's questions with replacement."""
    k = len(arrays)
    picks = rng.integers(0, k, size=(draws, k))  # [draws, k]
    totals = np.zeros(draws)
    for index, scores in enumerate(arrays):
        hits = np.nonzero(picks == index)[0]  # one entry per (draw, slot) that drew this run
        if hits.size:
            resampled = scores[rng.integers(0, scores.size, size=(hits.size, scores.size))].mean(axis=1)
            np.add.at(totals, hits, resampled)
    return totals / k


def _has_questions(runs: list[RunScores]) -> bool:
    return bool(runs) and all(r.questions for r in runs)


def _t_interval(values: list[float]) -> tuple[float, float]:
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(1 - ALPHA, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


FRACTION_SUFFIXES = ("exact_match", "accuracy", "acc", "acc_iou50", "f1", "precision", "recall", "em")


def metric_range(metric: str, values: list[float] = ()) -> tuple[float, float]:
    """The values a metric can take: fractions (exact match, accuracies, F1) in [0, 1] (or [0, 100]
    when its values are percentages), losses >= 0, anything else (MME's scores, counts) unbounded.
    A "needs vision" difference (lmm.eval.blind) spans the metric's range on both sides of 0."""
    benchmark, _, rest = metric.partition("/")
    if benchmark.endswith(NEEDS_VISION):
        high = metric_range(f"{benchmark.removesuffix(NEEDS_VISION)}/{rest}", [abs(v) for v in values])[1]
        return -high, high
    name = metric.rsplit("/", 1)[-1].lower()
    if name.endswith(FRACTION_SUFFIXES) and all(0 <= v <= 100 for v in values):
        return (0.0, 1.0) if all(v <= 1 for v in values) else (0.0, 100.0)
    if name.endswith("loss") or name.endswith("perplexity"):
        return 0.0, math.inf
    return -math.inf, math.inf


def within_range(interval: Interval | None, metric: str, values: list[float] = ()) -> Interval | None:
    """A t interval kept inside the metric's range (metric_range: a loss's cannot go below 0, an
    accuracy's above 1); the method says so when it had to be cut. Bootstrap intervals never leave it."""
    if interval is None:
        return None
    low, high = metric_range(metric, values)
    if low <= interval.low and interval.high <= high:
        return interval
    bounds = f"[{low:g}, {high:g}]".replace("inf", "∞")
    return Interval(
        max(interval.low, low), min(interval.high, high), f"{interval.method}, clipped to the metric's range {bounds}"
    )


def cell_interval(runs: list[RunScores], rng: np.random.Generator, draws: int = DRAWS) -> Interval | None:
    """The 95% interval of a cell's mean over its seeds (None with fewer than 2 seeds)."""
    if len(runs) < 2:
        return None
    if _has_questions(runs):
        means = _hierarchical_means([np.fromiter(r.questions.values(), float) for r in runs], rng, draws)
        low, high = np.percentile(means, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
        return Interval(float(low), float(high), BOOTSTRAP)
    low, high = _t_interval([r.value for r in runs])
    return Interval(low, high, T_SEEDS)


def _bootstrap_p(draws: np.ndarray) -> float:
    return float(min(1.0, max(2 * min(np.mean(draws <= 0), np.mean(draws >= 0)), 1 / draws.size)))


def compare(
    row: list[RunScores], reference: list[RunScores], rng: np.random.Generator, paired: bool = True, draws: int = DRAWS
) -> Comparison | None:
    """`row` − `reference`, paired by seed and question where both allow it (see the module)."""
    by_seed = {r.seed: r for r in reference}
    pairs = [(r, by_seed[r.seed]) for r in row if r.seed in by_seed] if paired else []
    if len(pairs) >= 2 and all(a.questions and b.questions for a, b in pairs):
        differences, sizes = [], []
        for a, b in pairs:
            common = sorted(set(a.questions) & set(b.questions))
            if not common:
                break
            differences.append(np.array([a.questions[q] - b.questions[q] for q in common]))
            sizes.append(len(common))
        else:
            boot = _hierarchical_means(differences, rng, draws)
            low, high = np.percentile(boot, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
            per_seed = [float(d.mean()) for d in differences]
            return Comparison(
                float(np.mean(per_seed)),
                float(low),
                float(high),
                _bootstrap_p(boot),
                BOOTSTRAP,
                len(pairs),
                round(sum(sizes) / len(sizes)),
                per_seed,
            )
    if len(pairs) >= 2:
        per_seed = [a.value - b.value for a, b in pairs]
        low, high = _t_interval(per_seed)
        p = (
            float(stats.ttest_rel([a.value for a, _ in pairs], [b.value for _, b in pairs]).pvalue)
            if np.std(per_seed) > 0
            else (0.0 if per_seed[0] != 0 else 1.0)
        )
        return Comparison(float(np.mean(per_seed)), low, high, p, PAIRED_T, len(pairs), None, per_seed)
    if len(row) >= 2 and len(reference) >= 2:
        a, b = [r.value for r in row], [r.value for r in reference]
        test = stats.ttest_ind(a, b, equal_var=False)
        difference = float(np.mean(a) - np.mean(b))
        interval = test.confidence_interval(1 - ALPHA)
        p = float(test.pvalue) if math.isfinite(test.pvalue) else 1.0
        return Comparison(
            difference,
            float(interval.low),
            float(interval.high),
            p,
            WELCH,
            min(len(a), len(b)),
            None,
            [v - float(np.mean(b)) for v in a],
        )
    return None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def paired_t_power(effect: float, sd: float, seeds: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test over `seeds` pairs whose differences have this mean and sd."""
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect / (sd / math.sqrt(seeds))
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_needed(seed_differences: list[float], effect: float | None = None) -> int | None:
    """Fewest seeds for 80% power (None: no spread to plan from, or more than MAX_SEEDS needed)."""
    if len(seed_differences) < 2:
        return None
    sd = float(np.std(seed_differences, ddof=1))
    effect = abs(float(np.mean(seed_differences)) if effect is None else effect)
    if sd == 0 or effect == 0:
        return None
    for seeds in range(2, MAX_SEEDS + 1):
        if paired_t_power(effect, sd, seeds) >= POWER:
            return seeds
    return None


def adjust(comparisons: list[Comparison], effect: float | None = None) -> None:
    """Holm-correct a table's comparisons in place and plan the seeds each would need."""
    for comparison, p in zip(comparisons, holm([c.p for c in comparisons]), strict=True):
        comparison.p_holm = p
        comparison.seeds_needed = seeds_needed(comparison.seed_differences, effect)
