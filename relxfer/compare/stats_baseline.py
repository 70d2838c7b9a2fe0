"""Baseline-gain model: does the gain from fine-tuning fall with baseline accuracy?

Regressing measured gain (after - before) on measured baseline across model x language cells
is biased negative by regression to the mean: the baseline's sampling noise e enters the
regressor as +e and the gain as -e, so even with no true relation the naive slope is about
-var(e) / var(measured baseline). The split-half estimate removes that coupling by measuring
the two quantities on disjoint passages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from relxfer.errors import DataError

from .stats_cluster import DesignError, ols
from .stats_common import AnalysisResult, fmt_num, interval_verdict
from .stats_data import (
    cell_table, missing_conditions, on_scale, paired_wide, split_half_counts, validate_items,
)

MIN_MODEL_CLUSTERS = 3


@dataclass
class BaselineGainResult(AnalysisResult):
    """Naive and split-half regressions of gain on baseline (see `baseline_gain`)."""

    condition: str
    reference: str
    scale: str
    n_cells: int = 0
    n_models: int = 0
    n_languages: int = 0
    naive_slope: float | None = None
    naive_slope_ci_low: float | None = None
    naive_slope_ci_high: float | None = None
    naive_intercept: float | None = None
    naive_intercept_ci_low: float | None = None
    naive_intercept_ci_high: float | None = None
    split_half_slope: float | None = None
    split_half_slope_ci_low: float | None = None
    split_half_slope_ci_high: float | None = None
    split_half_intercept: float | None = None
    split_half_intercept_ci_low: float | None = None
    split_half_intercept_ci_high: float | None = None
    split_slope_spread_low: float | None = None
    split_slope_spread_high: float | None = None
    n_splits: int = 0
    se_kind: str = ""
    lead: str = "split-half"
    method: str = ""
    summary: str = ""
    reason: str | None = None
    cells: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


def baseline_gain(
    items: pd.DataFrame,
    condition: str = "finetuned",
    n_splits: int = 200,
    seed: int = 0,
    reference: str = "baseline",
    scale: str = "raw",
    cluster: str | None = "model",
    level: float = 0.95,
) -> BaselineGainResult:
    """Regress the gain of `condition` over `reference` on baseline accuracy across model x
    language cells (seeds pooled), naively and split-half.

    Naive: gain = acc_cond - acc_ref regressed on acc_ref, both from all items. Biased
    negative by regression to the mean (see the module docstring); reported for comparison.

    Split-half (the estimate to read): in each of `n_splits` random splits, each language's
    passages are cut into halves A and B; baseline accuracy comes from half A, the gain from
    half B, so their sampling errors are independent and the null slope is zero. The estimate
    is the mean slope over splits. Its interval is mean slope +/- t * sqrt(mean of the per-split
    variances): every split's own standard error describes the sampling variability of a
    one-split estimate, and averaging over splits can only reduce it, so this interval is
    conservative. The 2.5-97.5% range of the split slopes (`split_slope_spread_*`) shows how much
    the answer depends on the split; it is NOT a confidence interval. Using half the data for
    each quantity adds noise to the regressor, which attenuates a true non-zero slope towards 0.

    Standard errors: with `cluster="model"` (default) cells are clustered by model with CR2 and
    Bell-McCaffrey degrees of freedom, because baseline accuracy varies mostly between models,
    so models, not cells, are the replicates of this relation (falls back to classical OLS with
    fewer than 3 models); `cluster=None` gives classical OLS (scipy.stats.linregress's).
    `scale="raw"` (default) works in proportions (slope = points of gain per point of
    baseline); `scale="logit"` uses empirical logits log((k + 0.5)/(n - k + 0.5)).
    """
    result = BaselineGainResult(condition=condition, reference=reference, scale=scale, n_splits=n_splits)
    frame = validate_items(items)
    conditions = [reference, condition]
    missing = missing_conditions(frame, conditions)
    if missing:
        result.reason = f"condition(s) {missing} have no items"
        return _finish(result)
    wide = paired_wide(frame, conditions)
    cells = cell_table(wide, conditions)
    cells["baseline"] = on_scale(cells[f"k_{reference}"], cells["n"], scale)
    cells["gain"] = on_scale(cells[f"k_{condition}"], cells["n"], scale) - cells["baseline"]
    result.cells = cells
    result.n_cells, result.n_models, result.n_languages = (
        len(cells), cells["model"].nunique(), cells["language"].nunique())
    groups, result.se_kind = _se_setup(cells, cluster)
    try:
        naive = _fit(cells["baseline"], cells["gain"], groups, result.se_kind)
        half_a, half_b = split_half_counts(wide, cells, conditions, n_splits, seed)
        split = _split_half_fit(half_a, half_b, conditions, scale, groups, result.se_kind, level)
    except (DesignError, DataError) as error:
        result.reason = str(error)
        return _finish(result)
    result.naive_slope, result.naive_intercept = float(naive.coef[1]), float(naive.coef[0])
    result.naive_slope_ci_low, result.naive_slope_ci_high = naive.ci(1, level)
    result.naive_intercept_ci_low, result.naive_intercept_ci_high = naive.ci(0, level)
    for name, value in split.items():
        setattr(result, name, value)
    return _finish(result)


def _se_setup(cells: pd.DataFrame, cluster: str | None):
    if cluster is None:
        return None, "classical"
    if cluster != "model":
        raise ValueError(f"cluster must be 'model' or None, not {cluster!r}")
    if cells["model"].nunique() < MIN_MODEL_CLUSTERS:
        return None, "classical"
    return cells["model"].to_numpy(), "CR2"


def _fit(x, y, groups, kind):
    x = np.asarray(x, dtype=float)
    return ols(np.asarray(y, dtype=float), np.column_stack([np.ones_like(x), x]), groups, kind)


def _split_half_fit(half_a, half_b, conditions, scale, groups, kind, level) -> dict:
    reference, condition = conditions
    x = on_scale(half_a[reference], half_a["n"], scale)
    y = on_scale(half_b[condition], half_b["n"], scale) - on_scale(half_b[reference], half_b["n"], scale)
    fits = [_fit(x[:, s], y[:, s], groups, kind) for s in range(x.shape[1])]
    coefs = np.array([f.coef for f in fits])
    variances = np.array([np.diag(f.vcov) for f in fits])
    dfs = np.array([f.df for f in fits])
    estimate = coefs.mean(axis=0)
    se = np.sqrt(variances.mean(axis=0))
    q = stats.t.ppf(0.5 + level / 2, dfs.mean(axis=0))
    spread = np.percentile(coefs[:, 1], [2.5, 97.5])
    return {
        "split_half_slope": float(estimate[1]),
        "split_half_slope_ci_low": float(estimate[1] - q[1] * se[1]),
        "split_half_slope_ci_high": float(estimate[1] + q[1] * se[1]),
        "split_half_intercept": float(estimate[0]),
        "split_half_intercept_ci_low": float(estimate[0] - q[0] * se[0]),
        "split_half_intercept_ci_high": float(estimate[0] + q[0] * se[0]),
        "split_slope_spread_low": float(spread[0]),
        "split_slope_spread_high": float(spread[1]),
    }


def _finish(result: BaselineGainResult) -> BaselineGainResult:
    se_text = {
        "CR2": "cells clustered by model (CR2, Bell-McCaffrey df)",
        "classical": "classical OLS standard errors",
        "": "no standard errors",
    }[result.se_kind]
    result.method = (
        f"Gain ({result.condition} - {result.reference}, {result.scale} scale) regressed on "
        f"baseline across model x language cells, seeds pooled; {se_text}. Naive: both from all "
        f"passages (biased negative by regression to the mean). Split-half (lead): baseline from "
        f"a random half of each language's passages, gain from the other half, mean over "
        f"{result.n_splits} splits; interval uses the mean per-split variance (conservative); the "
        f"split spread is the 2.5-97.5% range of split slopes, not a confidence interval."
    )
    if result.reason is not None:
        result.summary = f"Baseline-gain model not fitted: {result.reason}."
        return result
    unit = "points of gain per point of baseline" if result.scale == "raw" else "logits of gain per logit of baseline"
    verdict = {
        "below zero": "gains fall as baseline accuracy rises",
        "above zero": "gains rise with baseline accuracy",
        "includes zero": "no evidence that gains depend on baseline once regression to the mean is removed",
    }[interval_verdict(result.split_half_slope_ci_low, result.split_half_slope_ci_high)]
    result.summary = (
        f"Split-half slope {fmt_num(result.split_half_slope)} {unit} (95% CI "
        f"{fmt_num(result.split_half_slope_ci_low)} to {fmt_num(result.split_half_slope_ci_high)}) vs naive "
        f"{fmt_num(result.naive_slope)} ({fmt_num(result.naive_slope_ci_low)} to "
        f"{fmt_num(result.naive_slope_ci_high)}, biased negative by regression to the mean) over "
        f"{result.n_cells} cells: {verdict}."
    )
    return result
