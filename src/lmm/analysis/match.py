"""`lmm ablate --match flops|tokens|visual-tokens|steps`: what a comparison held equal, checked.

A compute-matched comparison is only one if every row trained with the same budget. The check
reads each run's results.json "cost" and either states what was held equal (the table's
footnote and summary carry the sentence) or stops with each row's value and, for a budget that
grows with steps (FLOPs, tokens), the `trainer.max_steps` each row needs to match the smallest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    cost: str  # the results.json "cost" entry
    words: str  # how the table names it
    per_step: bool  # it grows with the steps trained (so steps can match it)


BUDGETS = {
    "flops": Budget("flops", "training FLOPs", True),
    "tokens": Budget("tokens_seen", "training tokens seen", True),
    "visual-tokens": Budget("visual_tokens_per_image", "visual tokens per image", False),
    "steps": Budget("steps", "optimizer steps", False),
}
COST_KEYS = {budget.cost for budget in BUDGETS.values()}


def _si(value: float) -> str:
    return f"{value:.3g}"


def held_equal(rows: dict[str, list], what: str, tolerance: float) -> str:
    """`rows`: label -> its runs (each with `.cost` and `.path`). The sentence saying what was held
    equal, or SystemExit saying which rows differ and how to match them."""
    budget = BUDGETS[what]
    values: dict[str, list[float]] = {}
    for label, runs in rows.items():
        for run in runs:
            if run.status != "finished":
                continue
            value = run.cost.get(budget.cost)
            if value is None:
                raise SystemExit(
                    f"--match {what}: run {run.path} has no {budget.cost!r} in its results.json cost (train it again "
                    "with this lmm to record it)"
                )
            values.setdefault(label, []).append(float(value))
    if not values:
        raise SystemExit(f"--match {what}: no finished run to compare")
    everything = [v for vs in values.values() for v in vs]
    low, high = min(everything), max(everything)
    if high <= low * (1 + tolerance) or math.isclose(low, high):
        spread = _si(low) if math.isclose(low, high) else f"{_si(low)}–{_si(high)} (within {tolerance:.0%})"
        return f"held equal (--match {what}): {budget.words}, {spread} in every run"
    lines = [f"--match {what}: the rows did not train with equal {budget.words} (tolerance {tolerance:.0%}):"]
    for label, vs in values.items():
        lines.append(f"  {label}: {', '.join(_si(v) for v in vs)}")
    if budget.per_step:
        lines.append(f"  to hold them equal at the smallest ({_si(low)}), train each row for:")
        for label, runs in rows.items():
            steps = [r.cost.get("steps") for r in runs if r.status == "finished"]
            per_run = values.get(label, [])
            if steps and all(steps) and per_run:
                need = round(min(s * low / v for s, v in zip(steps, per_run, strict=True)))
                lines.append(f"    {label}: trainer.max_steps={need}")
    raise SystemExit("\n".join(lines))
