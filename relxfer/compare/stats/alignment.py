"""Task-alignment probe: do the cells that fine-tuning helps also gain from chain-of-thought?

If fine-tuning mostly teaches the task format, the model x language cells that gain from it
should be the ones that gain from CoT prompting without any fine-tuning, so the two gains
correlate across cells.

A trap: both gains subtract the same baseline measurement, so the baseline's sampling noise
e enters both as -e and correlates them positively even when the true gains are unrelated.
Beside the usual correlations the result therefore reports a split-half Pearson r, where the
fine-tuning gain is measured on one half of each language's passages and the CoT gain on the
other, so no noise is shared. Half-size samples are noisier, so the split-half r is attenuated
towards 0: a split-half r well below the full-data r says the shared baseline inflated the
latter, but it is not itself an unbiased estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from relxfer.compare.stats.common import AnalysisResult, fmt_num, fmt_p
from relxfer.compare.stats.data import (
    cell_table,
    missing_conditions,
    paired_wide,
    split_half_counts,
    validate_items,
)
from relxfer.errors import DataError

MIN_CELLS = 4


@dataclass
class TaskAlignmentResult(AnalysisResult):
    """Correlation of fine-tuning gain and CoT gain across cells (see `task_alignment`)."""

    condition: str = "finetuned"  # the fine-tuned condition
    cot: str = "cot"
    reference: str = "baseline"
    scale: str = "raw"
    n_cells: int = 0
    pearson_r: float | None = None
    pearson_ci_low: float | None = None
    pearson_ci_high: float | None = None
    pearson_p: float | None = None
    spearman_rho: float | None = None
    spearman_ci_low: float | None = None
    spearman_ci_high: float | None = None
    spearman_p: float | None = None
    split_half_pearson_r: float | None = None
    split_half_spread_low: float | None = None
    split_half_spread_high: float | None = None
    n_boot: int = 0
    n_splits: int = 0
    method: str = ""
    summary: str = ""  # one plain sentence
    detail: str = ""
    reason: str | None = None
    cells: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


def task_alignment(
    items: pd.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    finetuned: str = "finetuned",
    cot: str = "cot",
    reference: str = "baseline",
    n_splits: int = 200,
    level: float = 0.95,
) -> TaskAlignmentResult:
    """Pearson and Spearman correlation of the fine-tuning gain (finetuned - baseline) and the
    CoT gain (cot - baseline), in raw accuracy, across model x language cells (seeds pooled;
    items answered under all three conditions only).

    p-values are scipy's (pearsonr: t test; spearmanr: t approximation). Intervals are
    percentile bootstraps over cells (`n_boot` resamples of the cells with replacement).
    Cells share models and languages, so they are not independent and the bootstrap is
    optimistic when a few models drive the correlation; read it as descriptive. The
    split-half r (mean over `n_splits` passage splits) removes the positive bias from the shared
    baseline measurement; `split_half_spread_*` is the 2.5-97.5% range over splits, not a
    confidence interval. Returns None fields with a `reason` when a condition is missing or
    there are fewer than 4 cells or a gain does not vary.
    """
    result = TaskAlignmentResult(condition=finetuned, cot=cot, reference=reference, n_boot=n_boot, n_splits=n_splits)
    conditions = [reference, finetuned, cot]
    result.method = (
        f"Across model x language cells: Pearson and Spearman correlation of ({finetuned} - {reference}) "
        f"and ({cot} - {reference}) accuracy gains, scipy p-values, percentile bootstrap over cells "
        f"({n_boot} resamples); split-half r with the two gains on disjoint passage halves "
        f"({n_splits} splits) to remove shared-baseline noise."
    )
    frame = validate_items(items)
    missing = missing_conditions(frame, conditions)
    if missing:
        return _fail(result, f"condition(s) {missing} have no items")
    wide = paired_wide(frame, conditions)
    cells = cell_table(wide, conditions)
    cells["ft_gain"] = cells[f"acc_{finetuned}"] - cells[f"acc_{reference}"]
    cells["cot_gain"] = cells[f"acc_{cot}"] - cells[f"acc_{reference}"]
    result.cells, result.n_cells = cells, len(cells)
    if len(cells) < MIN_CELLS:
        return _fail(result, f"{len(cells)} cells with all of {conditions}; needs at least {MIN_CELLS}")
    x, y = cells["ft_gain"].to_numpy(), cells["cot_gain"].to_numpy()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return _fail(result, "a gain is the same in every cell, so a correlation is undefined")
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    result.pearson_r, result.pearson_p = float(pearson.statistic), float(pearson.pvalue)
    result.spearman_rho, result.spearman_p = float(spearman.statistic), float(spearman.pvalue)
    boot_pearson, boot_spearman = _bootstrap(x, y, n_boot, seed)
    tails = [50 - 50 * level, 50 + 50 * level]
    result.pearson_ci_low, result.pearson_ci_high = (float(v) for v in np.nanpercentile(boot_pearson, tails))
    result.spearman_ci_low, result.spearman_ci_high = (float(v) for v in np.nanpercentile(boot_spearman, tails))
    try:
        _split_half(result, wide, cells, (reference, finetuned, cot), n_splits, seed)
    except DataError as error:
        result.method += f" Split-half skipped: {error}."
    _summary(result, finetuned, cot)
    return result


def _bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman r of `n_boot` resamples of the cells (NaN where a resample is
    constant in one variable)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (n_boot, len(x)))
    xb, yb = x[idx], y[idx]
    ranks_x = stats.rankdata(xb, axis=1)
    ranks_y = stats.rankdata(yb, axis=1)
    return _rowwise_pearson(xb, yb), _rowwise_pearson(ranks_x, ranks_y)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan))


def _split_half(
    result: TaskAlignmentResult,
    wide: pd.DataFrame,
    cells: pd.DataFrame,
    conditions: tuple[str, str, str],
    n_splits: int,
    seed: int,
) -> None:
    reference, finetuned, cot = conditions
    half_a, half_b = split_half_counts(wide, cells, conditions, n_splits, seed)
    ft = (half_a[finetuned] - half_a[reference]) / half_a["n"]
    co = (half_b[cot] - half_b[reference]) / half_b["n"]
    r = _rowwise_pearson(ft.T, co.T)
    result.split_half_pearson_r = float(np.nanmean(r))
    result.split_half_spread_low, result.split_half_spread_high = (float(v) for v in np.nanpercentile(r, [2.5, 97.5]))


def _summary(result: TaskAlignmentResult, finetuned: str, cot: str) -> None:
    low, high = result.pearson_ci_low, result.pearson_ci_high
    if low is not None and low > 0:
        verdict = "the cells that gain from fine-tuning also gain from CoT, as task-format alignment predicts"
    elif high is not None and high < 0:
        verdict = "the cells that gain from fine-tuning tend to gain less from CoT"
    else:
        verdict = "no clear relation between the two gains"
    result.summary = (
        f"{finetuned} and {cot} gains over {result.reference} across {result.n_cells} model x language cells: "
        f"{verdict} (Pearson r = {fmt_num(result.pearson_r)}, 95% bootstrap CI {fmt_num(result.pearson_ci_low)} "
        f"to {fmt_num(result.pearson_ci_high)})."
    )
    split = (
        ""
        if result.split_half_pearson_r is None
        else f" Split-half r = {fmt_num(result.split_half_pearson_r)} with the two gains on disjoint passages "
        f"(no shared baseline noise; attenuated toward 0)."
    )
    result.detail = (
        f"Pearson {fmt_p(result.pearson_p)}; Spearman rho = {fmt_num(result.spearman_rho)} "
        f"({fmt_num(result.spearman_ci_low)} to {fmt_num(result.spearman_ci_high)}, {fmt_p(result.spearman_p)}). "
        f"Cells share models and languages, so the bootstrap interval is descriptive.{split}"
    )


def _fail(result: TaskAlignmentResult, reason: str) -> TaskAlignmentResult:
    result.reason = reason
    result.summary = f"{result.condition} and {result.cot} gains: task-alignment probe not computed: {reason}."
    return result
