"""Baseline-gain model: does the gain from fine-tuning fall with baseline accuracy?

Regressing measured gain (after - before) on measured baseline across model x language cells
is pulled down by regression to the mean: the baseline's sampling noise e enters the regressor
as +e and the gain as -e, so even with no true relation the naive slope is about
-var(e) / var(measured baseline); the same noise also attenuates a real slope toward 0.

The lead is the measurement-error-corrected slope (`corrected_slope.py`): both effects are
removed with the baselines' noise variance estimated from the passages, using all the data.
The split-half slope (baseline from one half of the passages, gain from the other) is kept as a
check: unbiased under no relation, but half-size measurements attenuate it and its interval is
conservative, so it rarely detects a real slope (with 6 models and a true slope of -0.5 it
excluded 0 in a fraction of the studies the corrected slope did: bench/compare_simulations.py).
The report also says which slope the design could have detected, so "no evidence" is not read
as evidence of no relation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from relxfer.compare.stats.baseline_result import BaselineGainResult
from relxfer.compare.stats.baseline_text import describe
from relxfer.compare.stats.cluster import DesignError, OLSFit, ols
from relxfer.compare.stats.corrected_slope import corrected_slope
from relxfer.compare.stats.data import (
    Counts,
    gain_cells,
    missing_conditions,
    on_scale,
    split_half_counts,
    validate_items,
)
from relxfer.compare.stats.measurement import error_moments, reliability
from relxfer.errors import DataError

MIN_MODEL_CLUSTERS = 3
# Below this reliability most of the baselines' spread across cells is measurement noise, and the
# correction divides by a small, noisy number (a single model's languages, for instance).
MIN_RELIABILITY = 0.5


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
    language cells (seeds pooled): corrected for measurement error (the lead), naively and
    split-half.

    Corrected: `corrected_slope.corrected_slope`, gain and baseline from all items with the
    baselines' noise removed from the normal equations; interval by delete-one-model jackknife
    (delete-one-language with fewer than 3 models), t(G-1). `detectable_slope` is the slope the
    design would detect with 80% power at the 5% level; `baseline_reliability` the share of the
    baselines' spread across cells that is not measurement noise (below 0.5 no corrected slope
    is reported: `method_note` says why). `conclusion` reads the
    corrected interval ("above", "below" or "none"; there is no exact test for a slope).

    Naive: gain = acc_cond - acc_ref regressed on acc_ref, both from all items; pulled down by
    regression to the mean and attenuated (see the module docstring); reported for comparison.

    Split-half (a check): in each of `n_splits` random splits, each language's passages are cut
    into halves A and B; baseline accuracy comes from half A, the gain from half B, so their
    sampling errors are independent and the null slope is zero. The estimate is the mean slope
    over splits; its interval is mean slope +/- t * sqrt(mean of the per-split variances)
    (conservative); `split_slope_spread_*` is the 2.5-97.5% range of the split slopes, NOT a
    confidence interval. Half-size measurements attenuate a true non-zero slope toward 0.

    Standard errors of the naive and split-half fits: with `cluster="model"` (default) cells are
    clustered by model with CR2 and Bell-McCaffrey degrees of freedom (falls back to classical
    OLS with fewer than 3 models); `cluster=None` gives classical OLS (scipy.stats.linregress's)
    and a delete-one-cell jackknife for the corrected slope. `scale="raw"` (default) works in
    proportions (slope = points of gain per point of baseline); `scale="logit"` uses empirical
    logits log((k + 0.5)/(n - k + 0.5)).
    """
    result = BaselineGainResult(condition=condition, reference=reference, scale=scale, n_splits=n_splits)
    frame = validate_items(items)
    conditions = (reference, condition)
    missing = missing_conditions(frame, conditions)
    if missing:
        result.reason = f"condition(s) {missing} have no items"
        return describe(result)
    wide, cells = gain_cells(frame, reference, condition, scale)
    result.cells = cells
    result.n_cells, result.n_models, result.n_languages = (
        len(cells),
        cells["model"].nunique(),
        cells["language"].nunique(),
    )
    groups, result.se_kind = _se_setup(cells, cluster)
    try:
        naive = _fit(cells["baseline"], cells["gain"], groups, result.se_kind)
        half_a, half_b = split_half_counts(wide, cells, conditions, n_splits, seed)
        split = _split_half_fit(half_a, half_b, conditions, scale, groups, result.se_kind, level)
    except (DesignError, DataError) as error:
        result.reason = str(error)
        return describe(result)
    result.naive_slope, result.naive_intercept = float(naive.coef[1]), float(naive.coef[0])
    result.naive_slope_ci_low, result.naive_slope_ci_high = naive.ci(1, level)
    result.naive_intercept_ci_low, result.naive_intercept_ci_high = naive.ci(0, level)
    for name, value in split.items():
        setattr(result, name, value)
    _corrected(result, wide, cells, conditions, cluster, level)
    return describe(result)


def _corrected(
    result: BaselineGainResult,
    wide: pd.DataFrame,
    cells: pd.DataFrame,
    conditions: tuple[str, str],
    cluster: str | None,
    level: float,
) -> None:
    v, w = error_moments(wide, cells, *conditions, result.scale)
    b, g = cells["baseline"].to_numpy(float), cells["gain"].to_numpy(float)
    result.baseline_reliability = reliability(b, v)
    if not result.baseline_reliability >= MIN_RELIABILITY:
        r = result.baseline_reliability
        why = (
            "their spread across cells is no larger than their measurement noise"
            if not r > 0
            else "most of their spread across cells is measurement noise"
        )
        # Reliability = 1 - noise variance / observed variance: below 0 when noise exceeds the
        # spread, which reads as nonsense as a number; say "none" then.
        shown = f"{r:.2f}" if r > 0 else f"none (the estimate, {r:.2f}, is below 0)"
        result.method_note = (
            f"the baselines differ too little across cells for a correction: {why} "
            f"(reliability {shown}; a correction needs {MIN_RELIABILITY})"
        )
        return
    if cluster is None:
        labels, result.corrected_clusters = np.arange(len(cells)), "cell"
    elif result.n_models >= MIN_MODEL_CLUSTERS:
        labels, result.corrected_clusters = cells["model"].to_numpy(), "model"
    else:
        labels, result.corrected_clusters = cells["language"].to_numpy(), "language"
    fit = corrected_slope(b, g, v, w, labels, level)
    if not np.isfinite([fit.slope, fit.se]).all():
        result.method_note = "corrected slope not estimable: the baselines vary less than their measurement noise"
        return
    result.corrected_slope, result.corrected_intercept = fit.slope, fit.intercept
    result.corrected_slope_se, result.corrected_df = fit.se, fit.df
    result.corrected_slope_ci_low, result.corrected_slope_ci_high = fit.ci_low, fit.ci_high
    result.detectable_slope = fit.detectable
    result.conclusion = "above" if fit.ci_low > 0 else "below" if fit.ci_high < 0 else "none"


def _se_setup(cells: pd.DataFrame, cluster: str | None) -> tuple[np.ndarray | None, str]:
    if cluster is None:
        return None, "classical"
    if cluster != "model":
        raise ValueError(f"cluster must be 'model' or None, not {cluster!r}")
    if cells["model"].nunique() < MIN_MODEL_CLUSTERS:
        return None, "classical"
    return cells["model"].to_numpy(), "CR2"


def _fit(x: npt.ArrayLike, y: npt.ArrayLike, groups: np.ndarray | None, kind: str) -> OLSFit:
    baseline = np.asarray(x, dtype=float)
    return ols(np.asarray(y, dtype=float), np.column_stack([np.ones_like(baseline), baseline]), groups, kind)


def _split_half_fit(
    half_a: Counts,
    half_b: Counts,
    conditions: tuple[str, str],
    scale: str,
    groups: np.ndarray | None,
    kind: str,
    level: float,
) -> dict[str, float]:
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
