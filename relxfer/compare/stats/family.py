"""Family-gap model: do related languages gain more than controls?

The estimate (the lead): the difference of mean gains, related minus control languages, within
each model (gain ~ related + model fixed effects over model x language cells, seeds pooled). It
is a change score: it asks how much more related languages moved, not where they would be "at
equal baseline".

Why not adjust for the measured baseline (`family_fits.fit_ols` with it as covariate): a language's
baseline is measured on ~100 questions, so its noise is large next to the real spread of
baselines between languages of one family, and the gain contains the same noise with the
opposite sign. Adjusting for it pulls the estimate toward the family with the higher baseline
(Lord's paradox with a fallible covariate): with related languages 7 points higher and no gap,
the adjusted estimate averaged +5.5 points and its interval covered the truth in 88% of studies
(bench/compare_simulations.py). Adjusting correctly needs the baseline's reliability within
model and family, which such a design measures at about 0.1: an errors-in-variables correction
divides by it (its estimates spread over +/-100 points), and cross-fitting (the baseline from
one half of the passages, the gain from the other) is unbiased but removes only that share of a
real baseline effect. So the unadjusted gap leads, and the cross-fitted adjustment is shown
beside it as a labelled sensitivity analysis, with the reliability that says how much it can
adjust.

Languages are the unit of replication: the related/control label belongs to a language, so
there are only as many independent pieces of evidence as languages. Inference:
- interval: CR2 cluster-robust by language with Bell-McCaffrey degrees of freedom (Welch-like);
- exact permutation test over every assignment of the languages to the two groups (keeping
  group sizes). For 3 vs 3 languages its smallest two-sided p is 2/20 = 0.10, for 4 vs 4 it is
  2/70 = 0.029.
The report's rule (`common.conclusion`) calls the gap a finding only when both agree. With
fewer than 3 languages a side nothing is inferred (descriptive means only).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from relxfer.compare.stats.cluster import DesignError, ols
from relxfer.compare.stats.common import ALPHA, conclusion
from relxfer.compare.stats.corrected_slope import POWER
from relxfer.compare.stats.data import (
    gain_cells,
    missing_conditions,
    split_half_counts,
    validate_items,
)
from relxfer.compare.stats.family_fits import design, fit_cross_fitted, fit_ols
from relxfer.compare.stats.family_result import FamilyGapResult
from relxfer.compare.stats.family_text import describe
from relxfer.compare.stats.measurement import error_moments
from relxfer.compare.stats.permutation import permutation_p
from relxfer.errors import DataError

MIN_LANGUAGES_PER_GROUP = 3  # below this nothing is inferred
ADJUSTMENTS = ("cross-fitted", "measured", None)


def family_gap(
    items: pd.DataFrame,
    condition: str = "finetuned",
    n_perm: int | None = None,
    reference: str = "baseline",
    scale: str = "raw",
    adjustment: str | None = "cross-fitted",
    n_splits: int = 10,
    seed: int = 0,
    level: float = 0.95,
) -> FamilyGapResult:
    """Estimate how much more related languages gain than controls (see the module docstring).

    Cells: model x language, seeds pooled, paired items only. `scale="raw"` (default) measures
    gains in accuracy points (proportions here: 0.12 is 12 points); `scale="logit"` uses
    empirical logits log((k + 0.5)/(n - k + 0.5)), for studies near the 25% floor or the
    ceiling.

    Lead: `estimate` is the related coefficient of gain ~ related + model fixed effects, i.e.
    the mean within-model difference of gains; `ci_*`, `df` and `p_value` from CR2 by language
    (Bell-McCaffrey df), `cr1_*` the CR1 version beside it. `perm_*`: the exact permutation test
    over assignments of languages to groups of the observed sizes (`n_perm=None`: all of them
    unless more than 200,000, then 20,000 random ones; `n_perm=k`: at most k). `conclusion` is
    the report's rule applied to the interval and the two-sided permutation p.

    Sensitivity (`adjustment`): "cross-fitted" (default) adds the baseline as a covariate,
    measured on half of each language's passages while the gain comes from the other half,
    both ways, over `n_splits` random splits (`family_fits.fit_cross_fitted`); "measured" adds
    the baseline measured on all passages (the pre-issue-12 estimator, biased toward the family
    with the higher baseline; for comparisons); None skips it. `baseline_reliability` is the
    share of the baseline's spread within model and family that is not measurement noise, and
    `adjustable_share` the share of a baseline effect the adjustment can remove.
    """
    if adjustment not in ADJUSTMENTS:
        raise ValueError(f"adjustment must be one of {ADJUSTMENTS}, not {adjustment!r}")
    result = FamilyGapResult(condition=condition, reference=reference, scale=scale, adjustment=adjustment)
    frame = validate_items(items)
    conditions = (reference, condition)
    missing = missing_conditions(frame, conditions)
    if missing:
        result.reason = f"condition(s) {missing} have no items"
        return describe(result)
    wide, cells = gain_cells(frame, reference, condition, scale)
    cells["raw_gain"] = cells[f"acc_{condition}"] - cells[f"acc_{reference}"]
    cells["related"] = (cells["role"] == "related").astype(float)
    result.cells = cells
    languages = cells.drop_duplicates("language").set_index("language")["role"]
    result.n_related = int((languages == "related").sum())
    result.n_control = int((languages == "control").sum())
    result.n_cells, result.n_models = len(cells), cells["model"].nunique()
    if min(result.n_related, result.n_control) < 1:
        result.reason = (
            f"{result.n_related} related and {result.n_control} control language(s); the contrast needs both"
        )
        return describe(result)
    _describe_cells(result, cells)
    if min(result.n_related, result.n_control) < MIN_LANGUAGES_PER_GROUP:
        result.conclusion = "refused"
        return describe(result)
    try:
        lead = fit_ols(cells, cells["gain"], level=level, n_perm=n_perm, seed=seed)
        cr1 = ols(cells["gain"].to_numpy(float), design(cells), cells["language"].to_numpy(), "CR1")
    except DesignError as error:
        result.reason = str(error)
        return describe(result)
    result.estimate, result.se, result.df = lead.estimate, lead.se, lead.df
    result.ci_low, result.ci_high, result.p_value = lead.ci_low, lead.ci_high, lead.p_value
    result.cr1_se, result.cr1_p_value = float(cr1.se[1]), cr1.p_value(1)
    for name, value in permutation_p(lead.betas, lead.estimate).items():
        setattr(result, name, value)
    result.perm_exact = lead.exact
    result.conclusion = conclusion(result.ci_low, result.ci_high, result.perm_p_value)
    if result.perm_min_p is not None and result.perm_min_p < ALPHA:
        result.detectable_gap = float((stats.t.ppf(0.975, lead.df) + stats.t.ppf(POWER, lead.df)) * lead.se)
    _sensitivity(result, wide, cells, conditions, n_splits, seed, level, n_perm)
    return describe(result)


def _describe_cells(result: FamilyGapResult, cells: pd.DataFrame) -> None:
    """Descriptive numbers, always in raw points: mean gains and baselines per family, and the
    reliability of the baseline within model and family."""
    related = cells["related"] == 1
    result.related_mean_gain = float(cells.loc[related, "raw_gain"].mean())
    result.control_mean_gain = float(cells.loc[~related, "raw_gain"].mean())
    result.raw_gap = result.related_mean_gain - result.control_mean_gain
    reference = result.reference
    result.baseline_difference = float(
        cells.loc[related, f"acc_{reference}"].mean() - cells.loc[~related, f"acc_{reference}"].mean()
    )


def _sensitivity(
    result: FamilyGapResult,
    wide: pd.DataFrame,
    cells: pd.DataFrame,
    conditions: tuple[str, str],
    n_splits: int,
    seed: int,
    level: float,
    n_perm: int | None,
) -> None:
    """The baseline-adjusted gap of `result.adjustment`, and the baseline's reliability."""
    reference, condition = conditions
    v, _ = error_moments(wide, cells, reference, condition, result.scale)
    X = design(cells)  # intercept, related, model: what the baseline is compared within
    spread = (
        cells["baseline"].to_numpy(float) - X @ np.linalg.lstsq(X, cells["baseline"].to_numpy(float), rcond=None)[0]
    )
    dof = max(len(cells) - X.shape[1], 1)
    within = float(spread @ spread / dof)
    result.baseline_reliability = float(max(0.0, 1 - np.mean(v) / within)) if within > 0 else 0.0
    if result.adjustment is None:
        return
    try:
        if result.adjustment == "measured":
            fit = fit_ols(cells, cells["gain"], covariate=cells["baseline"], level=level, n_perm=n_perm, seed=seed)
        else:
            half_a, half_b = split_half_counts(wide, cells, conditions, n_splits, seed)
            fit = fit_cross_fitted(cells, half_a, half_b, reference, condition, result.scale, level, n_perm, seed)
            r = result.baseline_reliability
            result.adjustable_share = r / (2 - r)  # Spearman-Brown: a half's reliability
            result.n_splits = n_splits
    except (DesignError, DataError) as error:
        result.note = f"Sensitivity analysis skipped: {error}."
        return
    result.adjusted_estimate, result.adjusted_p_value = fit.estimate, fit.p_value
    result.adjusted_ci_low, result.adjusted_ci_high = fit.ci_low, fit.ci_high
    result.adjusted_perm_p_value = permutation_p(fit.betas, fit.estimate)["perm_p_value"]
