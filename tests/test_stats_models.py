"""The cell-level models of relxfer.compare.stats (family gap, baseline-gain slope) checked
against independent statsmodels / scipy / numpy computations on simulated data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from relxfer.compare.stats import baseline_gain, family_gap
from relxfer.compare.stats.data import (
    cell_table,
    paired_wide,
    split_half_counts,
    validate_items,
)
from tests.support.simulate import simulate_points_study, simulate_study

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cells_study() -> pd.DataFrame:
    """7 models x 6 languages x 60 questions, 1 seed: the cell-level analyses' shape."""
    return simulate_study(n_questions=60, gain_ability_slope=-0.4, seed=12)


@pytest.fixture(scope="module")
def passages_study() -> pd.DataFrame:
    """6 models x 8 languages x 100 questions in passages of 5, answers correlated within a
    passage, a true slope of gain on baseline: what the measurement-error correction is for."""
    return simulate_points_study(
        n_models=6,
        model_baselines=np.linspace(0.3, 0.7, 6),
        gain=0.25,
        gain_slope=-0.5,
        family_baseline_gap=0.05,
        seed=21,
    )


def cluster_moments(items: pd.DataFrame, reference="baseline", condition="finetuned") -> pd.DataFrame:
    """Per model x language: the sampling variance of the baseline accuracy and its covariance
    with the condition's accuracy, clustered by passage, from statsmodels' cluster-robust SE of a
    mean (the covariance from var(a + b) = var(a) + var(b) + 2 cov(a, b))."""
    rows = []
    wide = items.pivot_table(
        index=["model", "language", "question_id", "passage_id"], columns="condition", values="correct"
    ).reset_index()
    for (model, language), block in wide.groupby(["model", "language"]):
        groups = pd.factorize(block["passage_id"])[0]

        def variance(y, groups=groups):
            fit = sm.OLS(y.to_numpy(float), np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": groups})
            return fit.bse[0] ** 2

        v0, v1 = variance(block[reference]), variance(block[condition])
        rows.append((model, language, v0, (variance(block[reference] + block[condition]) - v0 - v1) / 2))
    return pd.DataFrame(rows, columns=["model", "language", "v", "w"])


# ---------------------------------------------------------------- family gap


def test_family_gap_matches_statsmodels_ols_with_cluster_cr1(cells_study):
    result = family_gap(cells_study, "finetuned")
    cells = result.cells
    reference = sm.OLS.from_formula("gain ~ related + C(model)", cells).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(cells["language"])[0]}, use_t=True
    )
    assert result.estimate == pytest.approx(reference.params["related"])
    assert result.cr1_se == pytest.approx(reference.bse["related"])
    assert result.cr1_p_value == pytest.approx(reference.pvalues["related"])
    assert (result.n_related, result.n_control, result.n_cells, result.n_models) == (3, 3, 42, 7)
    np.testing.assert_allclose(cells["gain"], cells["acc_finetuned"] - cells["acc_baseline"])  # raw scale
    assert result.scale == "raw" and result.lead.startswith("difference of mean gains")


def test_family_gap_cr2_is_welch_on_language_means(cells_study):
    # Every language has every model, so the estimate is the difference of the languages' mean
    # gains and CR2 with Bell-McCaffrey df is Welch's SE with G - 2 df.
    result = family_gap(cells_study, "finetuned", adjustment=None)
    means = result.cells.groupby("language").agg(gain=("gain", "mean"), related=("related", "first"))
    related, control = means.loc[means["related"] == 1, "gain"], means.loc[means["related"] == 0, "gain"]
    welch = stats.ttest_ind(related, control, equal_var=False)
    assert result.estimate == pytest.approx(related.mean() - control.mean())
    assert result.se == pytest.approx(abs(result.estimate / welch.statistic))
    assert result.df == pytest.approx(4.0)
    q = stats.t.ppf(0.975, 4)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (result.estimate - q * result.se, result.estimate + q * result.se)
    )


def test_family_gap_permutation_p_by_brute_force(cells_study):
    result = family_gap(cells_study, "finetuned", adjustment=None)
    cells = result.cells.copy()
    languages = sorted(cells["language"].unique())
    betas = []
    for assignment in itertools.combinations(languages, 3):
        cells["related"] = cells["language"].isin(assignment).astype(float)
        betas.append(sm.OLS.from_formula("gain ~ related + C(model)", cells).fit().params["related"])
    betas = np.array(betas)
    assert result.perm_p_value == pytest.approx(np.mean(np.abs(betas) >= abs(result.estimate) - 1e-9))
    assert result.perm_p_greater == pytest.approx(np.mean(betas >= result.estimate - 1e-9))
    assert result.n_assignments == 20 and result.perm_exact
    assert result.perm_resolution == pytest.approx(1 / 20)
    assert result.perm_min_p == pytest.approx(2 / 20)  # an assignment and its complement tie
    # 3 vs 3 languages: the exact test cannot reach 0.05, so no finding is possible, and the
    # plain sentence says so.
    assert result.conclusion in ("none", "inconclusive")
    assert "no finding is possible: the exact permutation test's smallest possible p is 0.100" in result.summary


def test_family_gap_monte_carlo_permutation_when_asked_for_fewer():
    items = simulate_study(
        n_models=2, n_related=5, n_control=5, n_questions=20, conditions=("baseline", "finetuned"), seed=6
    )
    exact = family_gap(items, adjustment=None)
    sampled = family_gap(items, n_perm=99, adjustment=None)
    assert exact.n_assignments == math.comb(10, 5) and exact.perm_exact
    assert sampled.n_assignments == 100 and not sampled.perm_exact
    assert sampled.perm_resolution == pytest.approx(0.01)
    assert abs(sampled.perm_p_value - exact.perm_p_value) < 0.15
    assert "Monte Carlo" in sampled.method


def test_family_gap_logit_scale_uses_empirical_logits(cells_study):
    result = family_gap(cells_study, scale="logit", adjustment=None)
    logit = lambda k, n: np.log((k + 0.5) / (n - k + 0.5))  # noqa: E731
    cells = result.cells
    np.testing.assert_allclose(
        cells["gain"], logit(cells["k_finetuned"], cells["n"]) - logit(cells["k_baseline"], cells["n"])
    )
    assert " logits " in result.summary and result.scale == "logit"


def test_cross_fitted_sensitivity_is_the_stacked_regression_on_the_split_halves():
    items = simulate_points_study(family_baseline_gap=0.07, seed=4)
    result = family_gap(items, n_splits=4, seed=3)
    conditions = ["baseline", "finetuned"]
    wide = paired_wide(validate_items(items), conditions)
    cells = cell_table(wide, conditions)
    half_a, half_b = split_half_counts(wide, cells, conditions, n_splits=4, seed=3)
    rows = []
    for first, second in ((half_a, half_b), (half_b, half_a)):
        for s in range(4):
            copy = cells[["model", "language", "role"]].copy()
            copy["baseline"] = first["baseline"][:, s] / first["n"][:, s]
            copy["gain"] = (second["finetuned"][:, s] - second["baseline"][:, s]) / second["n"][:, s]
            rows.append(copy)
    stacked = pd.concat(rows, ignore_index=True).assign(related=lambda f: (f["role"] == "related").astype(float))
    reference = sm.OLS.from_formula("gain ~ related + baseline + C(model)", stacked).fit()
    assert result.adjusted_estimate == pytest.approx(reference.params["related"])
    assert result.adjusted_ci_low < result.adjusted_estimate < result.adjusted_ci_high
    assert 0 <= result.adjustable_share <= result.baseline_reliability <= 1
    assert "Sensitivity analysis, not a conclusion" in result.detail


def test_measured_adjustment_reproduces_the_old_estimator(cells_study):
    result = family_gap(cells_study, adjustment="measured")
    reference = sm.OLS.from_formula("gain ~ related + baseline + C(model)", result.cells).fit()
    assert result.adjusted_estimate == pytest.approx(reference.params["related"])


def test_too_few_languages_refuse_a_conclusion_without_inference():
    items = simulate_study(n_models=2, n_related=2, n_control=3, n_questions=20, seed=7)
    result = family_gap(items)
    record = result.as_record()
    assert result.conclusion == "refused" and result.reason is None
    assert all(
        record[k] is None for k in ("estimate", "ci_low", "ci_high", "p_value", "perm_p_value", "adjusted_estimate")
    )
    assert result.summary.startswith("finetuned vs baseline: no family conclusion: 2 related vs 3 control languages")
    gains = result.cells.groupby("role")["raw_gain"].mean()
    assert f"the related languages' mean gain was {100 * gains['related']:.1f} points" in result.summary
    none = family_gap(simulate_study(n_models=2, n_related=1, n_control=0, n_questions=20, seed=7))
    assert none.estimate is None and "1 related and 0 control" in none.reason


def test_a_difference_that_rounds_to_zero_is_said_so(cells_study):
    from relxfer.compare.stats.common import compare_amounts

    assert compare_amounts(0.0004, "raw", "related languages", "controls") == (
        "related languages gained about as much as controls (difference below 0.05 points)"
    )
    assert compare_amounts(-0.12, "raw", "related languages", "controls") == (
        "related languages gained 12.0 points less than controls"
    )


# ---------------------------------------------------------------- baseline-gain slope


def test_naive_baseline_gain_matches_linregress(cells_study):
    result = baseline_gain(cells_study, "finetuned", n_splits=10, cluster=None)
    cells = result.cells
    reference = stats.linregress(cells["acc_baseline"], cells["acc_finetuned"] - cells["acc_baseline"])
    assert result.naive_slope == pytest.approx(reference.slope)
    assert result.naive_intercept == pytest.approx(reference.intercept)
    q = stats.t.ppf(0.975, len(cells) - 2)
    assert result.naive_slope_ci_low == pytest.approx(reference.slope - q * reference.stderr)
    assert result.naive_intercept_ci_high == pytest.approx(reference.intercept + q * reference.intercept_stderr)


def test_baseline_gain_clustered_by_model_and_logit_scale(cells_study):
    result = baseline_gain(cells_study, "finetuned", n_splits=10, scale="logit")
    cells = result.cells
    k, n = cells["k_baseline"], cells["n"]
    np.testing.assert_allclose(cells["baseline"], np.log((k + 0.5) / (n - k + 0.5)))
    X = sm.add_constant(cells["baseline"].to_numpy())
    reference = sm.OLS(cells["gain"].to_numpy(), X).fit()
    assert result.naive_slope == pytest.approx(reference.params[1])
    assert result.se_kind == "CR2"
    # Clustering by model with 7 clusters must widen the interval relative to classical OLS.
    assert result.naive_slope_ci_high - result.naive_slope_ci_low > 2 * 1.99 * reference.bse[1]


def test_corrected_slope_against_an_independent_computation(passages_study):
    result = baseline_gain(passages_study, "finetuned", n_splits=10)
    cells = result.cells.merge(cluster_moments(passages_study), on=["model", "language"])
    b, g, v, w = (cells[c].to_numpy(float) for c in ("baseline", "gain", "v", "w"))

    def slope(i):  # centred form of the corrected normal equations
        bc, gc = b[i] - b[i].mean(), g[i] - g[i].mean()
        return (bc @ gc - np.sum(w[i] - v[i])) / (bc @ bc - np.sum(v[i]))

    everything = np.ones(len(b), bool)
    assert result.corrected_slope == pytest.approx(slope(everything), rel=1e-10)
    models = cells["model"].to_numpy()
    replicates = np.array([slope(models != m) for m in sorted(set(models))])
    se = np.sqrt(5 / 6 * np.sum((replicates - replicates.mean()) ** 2))
    assert result.corrected_slope_se == pytest.approx(se, rel=1e-10)
    q = stats.t.ppf(0.975, 5)
    assert (result.corrected_slope_ci_low, result.corrected_slope_ci_high) == pytest.approx(
        (result.corrected_slope - q * se, result.corrected_slope + q * se)
    )
    assert result.detectable_slope == pytest.approx((q + stats.t.ppf(0.8, 5)) * se)
    assert result.baseline_reliability == pytest.approx(1 - v.mean() / np.var(b, ddof=1))
    assert result.corrected_clusters == "model" and result.lead == "corrected"


def test_split_half_counts_partition_the_passages(cells_study):
    conditions = ["baseline", "finetuned"]
    wide = paired_wide(validate_items(cells_study), conditions)
    cells = cell_table(wide, conditions)
    half_a, half_b = split_half_counts(wide, cells, conditions, n_splits=25, seed=1)
    for key in ["n", *conditions]:
        total = cells["n"] if key == "n" else cells[f"k_{key}"]
        np.testing.assert_allclose(half_a[key] + half_b[key], np.repeat(total.to_numpy()[:, None], 25, axis=1))
    assert (half_a["n"] == 30).all()  # 30 passages of 2 questions: 15 passages in half A
    assert np.unique(half_a["baseline"], axis=1).shape[1] > 20, "splits should differ"


def test_baseline_gain_words(passages_study, cells_study):
    result = baseline_gain(passages_study, "finetuned", n_splits=10)
    assert result.reason is None and result.n_cells == 48 and result.conclusion == "below"
    assert result.summary.startswith("finetuned vs baseline: gains fell as baseline accuracy rose")
    assert "split-half" in result.detail and "naive slope" in result.detail
    assert "biased negative" not in result.summary + result.detail
    flat = baseline_gain(simulate_points_study(n_models=3, seed=5), "finetuned", n_splits=10)
    assert flat.conclusion == "none"
    assert f"could have detected slopes of about {flat.detectable_slope:.2f} or steeper" in flat.summary
    assert "cells" not in result.as_record()


def test_baseline_gain_reports_missing_condition(cells_study):
    result = baseline_gain(cells_study[cells_study["condition"] != "finetuned"], "finetuned")
    assert result.naive_slope is None and "['finetuned'] have no items" in result.reason


def test_no_corrected_slope_when_baselines_barely_differ_beyond_their_noise():
    # One model: the cells are its languages, whose baselines differ by a few points while each
    # is measured with ~7 points of noise. Dividing by that reliability would give nonsense.
    items = simulate_points_study(n_models=1, language_sd=0.01, seed=3)
    result = baseline_gain(items, "finetuned", n_splits=10)
    assert result.baseline_reliability < 0.5 and result.corrected_slope is None and result.conclusion is None
    assert result.summary.startswith(
        "finetuned vs baseline: no slope of gain on baseline is estimated: the baselines "
        "differ too little across cells for a correction"
    )
