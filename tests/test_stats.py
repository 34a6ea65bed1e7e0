"""lmm.analysis.stats on sweeps with known answers: a difference that must be shown, one that must not,
one that only pairing shows; Holm's correction; seeds needed."""

import numpy as np
import pytest

from lmm.analysis import stats
from lmm.analysis.stats import RunScores


def bernoulli_runs(
    rate: float, seeds: int, questions: int, seed: int, shared: np.ndarray | None = None
) -> list[RunScores]:
    """Runs whose per-question scores are 0/1 draws at `rate` (or `shared` answers plus extra right ones)."""
    rng = np.random.default_rng(seed)
    runs = []
    for s in range(seeds):
        scores = rng.random(questions) < rate if shared is None else shared[s] | (rng.random(questions) < rate)
        runs.append(RunScores(str(s), float(scores.mean()), {f"q{i}": float(v) for i, v in enumerate(scores)}))
    return runs


def test_a_large_difference_is_shown_and_no_difference_is_not():
    better, worse = bernoulli_runs(0.7, 3, 400, seed=1), bernoulli_runs(0.5, 3, 400, seed=2)
    shown = stats.compare(better, worse, stats.generator("shown"))
    assert shown.method == stats.BOOTSTRAP and (shown.seeds, shown.questions) == (3, 400)
    assert shown.difference == pytest.approx(np.mean([r.value for r in better]) - np.mean([r.value for r in worse]))
    assert shown.low > 0 and shown.p < 0.01
    same_a, same_b = bernoulli_runs(0.5, 3, 400, seed=3), bernoulli_runs(0.5, 3, 400, seed=4)
    not_shown = stats.compare(same_a, same_b, stats.generator("not shown"))
    assert not_shown.low < 0 < not_shown.high and not_shown.p > 0.05
    stats.adjust([shown, not_shown])
    assert shown.significant and not not_shown.significant


def test_pairing_by_seed_shows_what_unpaired_cannot():
    """Seeds move both rows by ±0.2 together; the row is +0.02 on every seed."""
    base = [0.30, 0.50, 0.70]
    reference = [RunScores(str(s), v) for s, v in enumerate(base)]
    row = [RunScores(str(s), v + d) for s, (v, d) in enumerate(zip(base, [0.020, 0.022, 0.018], strict=True))]
    paired = stats.compare(row, reference, stats.generator("p"))
    unpaired = stats.compare(row, reference, stats.generator("u"), paired=False)
    assert paired.method == stats.PAIRED_T and unpaired.method == stats.WELCH
    assert paired.difference == pytest.approx(0.02) and unpaired.difference == pytest.approx(0.02)
    assert paired.p < 0.01 and paired.low > 0  # t = 0.02 / (0.002 / √3) = 17.3, df 2
    assert unpaired.p > 0.5 and unpaired.low < 0 < unpaired.high


def test_pairing_by_question_with_a_shared_answer_set():
    """Both rows answer the same easy questions right; the row also gets 3% more: tiny, but
    question-paired differences have almost no noise."""
    rng = np.random.default_rng(7)
    shared = rng.random((3, 600)) < 0.5
    reference = [
        RunScores(str(s), float(shared[s].mean()), {f"q{i}": float(v) for i, v in enumerate(shared[s])})
        for s in range(3)
    ]
    row = bernoulli_runs(0.03, 3, 600, seed=8, shared=shared)
    comparison = stats.compare(row, reference, stats.generator("q"))
    assert comparison.method == stats.BOOTSTRAP and 0.005 < comparison.difference < 0.03
    assert comparison.low > 0 and comparison.p < 0.01


def test_cell_intervals():
    t = stats.cell_interval([RunScores("0", 0.5), RunScores("1", 0.6), RunScores("2", 0.7)], stats.generator("t"))
    assert t.method == stats.T_SEEDS and (t.low, t.high) == (
        pytest.approx(0.351586, abs=1e-6),
        pytest.approx(0.848414, abs=1e-6),
    )
    runs = bernoulli_runs(0.6, 3, 300, seed=5)
    first = stats.cell_interval(runs, stats.generator("cell"))
    again = stats.cell_interval(runs, stats.generator("cell"))
    assert first.method == stats.BOOTSTRAP and (first.low, first.high) == (again.low, again.high)  # reproducible
    mean = np.mean([r.value for r in runs])
    assert first.low < mean < first.high and first.high - first.low < 0.2
    assert stats.cell_interval(runs[:1], stats.generator("one")) is None


def test_holm_and_seeds_needed():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]
    # Cohen's d = 1 (differences 0, 1, 2): a two-sided paired t-test needs 10 pairs for 80% power.
    assert stats.paired_t_power(1.0, 1.0, 10) == pytest.approx(0.8, abs=0.01)
    assert stats.seeds_needed([0.0, 1.0, 2.0]) == 10
    assert stats.seeds_needed([0.0, 1.0, 2.0], effect=2.0) == 5  # d = 2
    assert stats.seeds_needed([0.001, -0.001, 0.0]) is None  # no difference to plan for
    assert stats.seeds_needed([0.5]) is None
