"""Every statistic of relxfer.compare.stats checked against an independent statsmodels / scipy
computation on the same simulated data, plus the input contract and failure modes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from relxfer.compare.simulate import simulate_study
from relxfer.compare.stats import (
    accuracy_summary,
    accuracy_table,
    baseline_gain,
    family_gap,
    mcnemar_test,
    mixed_model,
    ols,
    paired_gains,
    paired_gains_summary,
    task_alignment,
)
from relxfer.compare.stats_data import cell_table, paired_wide, split_half_counts, validate_items
from relxfer.errors import DataError


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    """3 models x (3 related + 3 control) x 40 questions in 4-question passages x 2 seeds, with
    correlated answers within passages so clustering matters."""
    return simulate_study(n_models=3, n_questions=40, questions_per_passage=4, n_seeds=2,
                          baseline_noise=0.6, family_gap=0.5, seed=11)


@pytest.fixture(scope="module")
def cells_study() -> pd.DataFrame:
    """7 models x 6 languages x 60 questions, 1 seed: the cell-level analyses' shape."""
    return simulate_study(n_questions=60, gain_ability_slope=-0.4, seed=12)


# ---------------------------------------------------------------- input contract

def test_missing_column_is_named(study):
    with pytest.raises(DataError, match="lacks column\\(s\\) passage_id"):
        accuracy_table(study.drop(columns="passage_id"))


def test_duplicate_items_are_rejected(study):
    with pytest.raises(DataError, match="duplicated item rows"):
        accuracy_table(pd.concat([study, study.iloc[:3]]))


def test_language_with_two_roles_is_rejected(study):
    broken = study.copy()
    broken.loc[broken.index[:5], "role"] = "control" if broken["role"].iloc[0] == "related" else "related"
    with pytest.raises(DataError, match="labelled both related and control"):
        paired_gains(broken, "finetuned")


def test_unknown_condition_lists_the_available_ones(study):
    with pytest.raises(DataError, match=r"\['finetuned_cot'\] not in the items; available: \['baseline', 'cot', 'finetuned'\]"):
        paired_gains(study, "finetuned_cot")


def test_pairing_keeps_only_items_present_in_both_conditions(study):
    dropped = study[~((study["condition"] == "finetuned") & (study["question_id"] == "q000"))]
    wide = paired_wide(validate_items(dropped), ["baseline", "finetuned"])
    assert "q000" not in set(wide["question_id"])
    assert len(wide) == len(paired_wide(validate_items(study), ["baseline", "finetuned"])) - 3 * 6 * 2


def test_conditions_without_common_items_give_reasons_not_crashes(study):
    disjoint = study.copy()
    is_ft = disjoint["condition"] == "finetuned"
    disjoint.loc[is_ft, "question_id"] = "ft-" + disjoint.loc[is_ft, "question_id"]
    with pytest.raises(DataError, match="no item is answered under both baseline and finetuned"):
        paired_gains(disjoint, "finetuned")
    assert baseline_gain(disjoint, "finetuned", n_splits=5).reason
    assert "0 related and 0 control" in family_gap(disjoint).reason
    assert "0 cells" in task_alignment(disjoint, n_boot=10).reason
    assert mixed_model(disjoint).reason


# ---------------------------------------------------------------- accuracy table

def test_accuracy_matches_group_means_and_counts(study):
    table = accuracy_table(study)
    expected = study.groupby(["model", "seed", "language", "condition"]).agg(
        acc=("correct", "mean"), n=("correct", "size"), passages=("passage_id", "nunique"),
        unparsed=("predicted", lambda p: (p == -1).mean()))
    merged = table.join(expected, on=["model", "seed", "language", "condition"])
    assert len(table) == 3 * 2 * 6 * 3
    np.testing.assert_allclose(merged["accuracy"], merged["acc"])
    assert (merged["n_items"] == merged["n"]).all() and (merged["n_passages"] == merged["passages"]).all()
    np.testing.assert_allclose(merged["parse_failure_rate"], merged["unparsed"])
    assert (table.loc[table["condition"] != "cot", "parse_failure_rate"] == 0).all()


def test_accuracy_interval_matches_statsmodels_cluster_se_and_wilson(study):
    table = accuracy_table(study)
    assert (table["design_effect"] > 1).any(), "fixture should have clustered answers"
    for row in table.iloc[::9].itertuples():
        items = study[(study["model"] == row.model) & (study["seed"] == row.seed)
                      & (study["language"] == row.language) & (study["condition"] == row.condition)]
        y = items["correct"].to_numpy(float)
        fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(items["passage_id"])[0]})
        p, n, groups = y.mean(), len(y), items["passage_id"].nunique()
        deff = max(1.0, fit.bse[0] ** 2 / (p * (1 - p) / n)) if 0 < p < 1 else 1.0
        n_eff = n / deff * (stats.norm.ppf(0.975) / stats.t.ppf(0.975, groups - 1)) ** 2
        low, high = proportion_confint(p * n_eff, n_eff, alpha=0.05, method="wilson")
        assert row.design_effect == pytest.approx(deff)
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_accuracy_interval_stays_in_unit_interval_at_0_and_100_percent(study):
    extreme = study[study["condition"] == "baseline"].copy()
    extreme["correct"] = (extreme["language"] == "heb_Hebr").astype(int)
    table = accuracy_table(extreme)
    perfect, hopeless = table[table["accuracy"] == 1], table[table["accuracy"] == 0]
    assert len(perfect) and len(hopeless)
    assert (perfect["ci_high"] == 1).all() and (perfect["ci_low"].between(0.8, 1 - 1e-6)).all()
    assert (hopeless["ci_low"] == 0).all() and (hopeless["ci_high"].between(1e-6, 0.2)).all()


def test_negative_within_passage_correlation_never_narrows_the_interval():
    # Every passage has one right and one wrong answer: the cluster variance is 0, the design
    # effect is floored at 1, so the interval is Wilson on n (z/t)^2 items.
    items = simulate_study(n_models=1, n_related=1, n_control=1, n_questions=40,
                           conditions=("baseline",), seed=2)
    items["correct"] = (items["question_id"].str[-1].astype(int) % 2 == 0).astype(int)
    table = accuracy_table(items)
    n_eff = 40 * (stats.norm.ppf(0.975) / stats.t.ppf(0.975, 19)) ** 2
    assert (table["design_effect"] == 1).all()
    for row in table.itertuples():
        assert (row.ci_low, row.ci_high) == pytest.approx(proportion_confint(0.5 * n_eff, n_eff, method="wilson"))


def test_clustering_widens_the_interval_relative_to_independent_items():
    items = simulate_study(n_models=1, n_questions=60, questions_per_passage=6, baseline_noise=1.0,
                           conditions=("baseline",), seed=3)
    table = accuracy_table(items)
    plain = [proportion_confint(r.accuracy * r.n_items, r.n_items, method="wilson") for r in table.itertuples()]
    widths = table["ci_high"] - table["ci_low"]
    assert (widths.to_numpy() > np.array([h - l for l, h in plain])).all()
    assert table["design_effect"].mean() > 1.5
    assert "Accuracy ranged from" in accuracy_summary(table)


# ---------------------------------------------------------------- paired gains

@pytest.mark.parametrize("b, c", [(0, 0), (3, 9), (12, 12), (2, 22), (20, 40), (31, 18), (100, 80)])
def test_mcnemar_matches_statsmodels(b, c):
    p, test = mcnemar_test(b, c)
    exact = b + c < 25
    reference = mcnemar([[50, b], [c, 50]], exact=exact, correction=True).pvalue
    assert p == pytest.approx(reference, rel=1e-12)
    assert test == ("exact binomial" if exact else "chi-square (continuity corrected)")


def _holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment written out, independent of statsmodels."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def test_paired_gains_against_independent_computation(study):
    gains = paired_gains(study, "finetuned")
    assert len(gains) == 3 * 2 * 6
    for row in gains.itertuples():
        pair = study[(study["model"] == row.model) & (study["seed"] == row.seed) & (study["language"] == row.language)]
        wide = pair.pivot(index="question_id", columns="condition", values="correct")
        passage = pair.drop_duplicates("question_id").set_index("question_id").loc[wide.index, "passage_id"]
        b = int(((wide["baseline"] == 1) & (wide["finetuned"] == 0)).sum())
        c = int(((wide["baseline"] == 0) & (wide["finetuned"] == 1)).sum())
        assert (row.b, row.c) == (b, c)
        assert row.p_value == pytest.approx(mcnemar([[0, b], [c, 0]], exact=b + c < 25).pvalue, rel=1e-12)
        d = (wide["finetuned"] - wide["baseline"]).to_numpy(float)
        fit = sm.OLS(d, np.ones_like(d)).fit(cov_type="cluster", use_t=True,
                                            cov_kwds={"groups": pd.factorize(passage)[0]})
        low, high = fit.conf_int()[0]
        assert row.gain == pytest.approx(d.mean())
        assert (row.ci_low, row.ci_high) == pytest.approx((max(-1, low), min(1, high)), abs=1e-12)
        assert row.acc_ref == pytest.approx(wide["baseline"].mean())
    for _, block in gains.groupby(["model", "seed"]):
        np.testing.assert_allclose(block["p_holm"], _holm(block["p_value"].to_numpy()))


def test_paired_gains_summaries(study):
    gains = paired_gains(study, "cot")
    assert gains["summary"].str.contains("McNemar b = ").all()
    assert gains["reference"].eq("baseline").all() and gains["condition"].eq("cot").all()
    line = paired_gains_summary(gains)
    assert line.startswith("cot vs baseline: gains from") and "after Holm correction" in line


# ---------------------------------------------------------------- cluster-robust OLS

def _regression_data(seed=1, n=42, clusters=6):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(clusters), n // clusters)
    X = np.column_stack([np.ones(n), rng.normal(size=n), (groups < clusters // 2).astype(float)])
    y = X @ [0.5, 1.0, 0.3] + rng.normal(size=clusters)[groups] + rng.normal(size=n) * (1 + np.abs(X[:, 1]))
    return y, X, groups


def test_ols_cr1_and_cr0_match_statsmodels_cluster():
    y, X, groups = _regression_data()
    cr1 = ols(y, X, groups, "CR1")
    reference = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    np.testing.assert_allclose(cr1.coef, reference.params)
    np.testing.assert_allclose(cr1.se, reference.bse)
    np.testing.assert_allclose([cr1.ci(1)], [reference.conf_int()[1]])
    assert cr1.p_value(2) == pytest.approx(reference.pvalues[2])
    cr0 = ols(y, X, groups, "CR0")
    uncorrected = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False})
    np.testing.assert_allclose(cr0.se, uncorrected.bse)


def test_ols_classical_matches_statsmodels():
    y, X, _ = _regression_data(seed=2)
    fit, reference = ols(y, X, kind="classical"), sm.OLS(y, X).fit()
    np.testing.assert_allclose(fit.se, reference.bse)
    assert fit.p_value(1) == pytest.approx(reference.pvalues[1])


def test_cr2_with_singleton_clusters_is_hc2():
    y, X, _ = _regression_data(seed=3)
    fit = ols(y, X, np.arange(len(y)), "CR2")
    np.testing.assert_allclose(fit.se, sm.OLS(y, X).fit(cov_type="HC2").bse)


def test_cr2_for_a_group_contrast_is_welch_on_cluster_means_with_bell_mccaffrey_df():
    rng = np.random.default_rng(4)
    language = np.repeat(np.arange(6), 7)
    y = rng.normal(size=6)[language] + rng.normal(size=42) * 0.5
    X = np.column_stack([np.ones(42), (language < 3).astype(float)])
    fit = ols(y, X, language, "CR2")
    means = np.array([y[language == g].mean() for g in range(6)])
    welch = stats.ttest_ind(means[:3], means[3:], equal_var=False)
    assert fit.se[1] == pytest.approx(abs((means[:3].mean() - means[3:].mean()) / welch.statistic))
    assert fit.df[1] == pytest.approx(4.0)  # Welch df with equal variances for 3 vs 3


# ---------------------------------------------------------------- baseline-gain model

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


def test_baseline_gain_result_fields_and_summary(cells_study):
    result = baseline_gain(cells_study, "finetuned", n_splits=30)
    assert result.reason is None and result.n_cells == 42 and result.n_splits == 30
    assert result.split_half_slope_ci_low < result.split_half_slope < result.split_half_slope_ci_high
    assert result.split_slope_spread_low <= result.split_half_slope <= result.split_slope_spread_high
    assert "Split-half" in result.method and "not a confidence interval" in result.method
    assert result.summary.startswith("Split-half slope") and "naive" in result.summary
    assert "cells" not in result.as_record()


def test_baseline_gain_reports_missing_condition(study):
    result = baseline_gain(study[study["condition"] != "finetuned"], "finetuned")
    assert result.naive_slope is None and "['finetuned'] have no items" in result.reason


# ---------------------------------------------------------------- family-gap model

def test_family_gap_matches_statsmodels_ols_with_cluster_cr1(cells_study):
    result = family_gap(cells_study, "finetuned")
    cells = result.cells
    reference = sm.OLS.from_formula("gain ~ related + baseline + C(model)", cells).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(cells["language"])[0]}, use_t=True)
    assert result.estimate == pytest.approx(reference.params["related"])
    assert result.cr1_se == pytest.approx(reference.bse["related"])
    assert result.cr1_p_value == pytest.approx(reference.pvalues["related"])
    assert (result.n_related, result.n_control, result.n_cells, result.n_models) == (3, 3, 42, 7)
    assert result.lead.startswith("CR2")


def test_family_gap_cr2_equals_welch_for_one_model_without_covariates():
    items = simulate_study(n_models=1, n_questions=80, conditions=("baseline", "finetuned"), seed=5)
    result = family_gap(items, scale="raw", adjust_baseline=False)
    gains = result.cells.set_index("language")["raw_gain"]
    related = gains[result.cells.set_index("language")["role"] == "related"]
    control = gains.drop(related.index)
    welch = stats.ttest_ind(related, control, equal_var=False)
    assert result.estimate == pytest.approx(related.mean() - control.mean())
    assert result.se == pytest.approx(abs(result.estimate / welch.statistic))
    assert result.df == pytest.approx(4.0)
    q = stats.t.ppf(0.975, 4)
    assert (result.ci_low, result.ci_high) == pytest.approx((result.estimate - q * result.se, result.estimate + q * result.se))


def test_family_gap_permutation_p_by_brute_force(cells_study):
    result = family_gap(cells_study, "finetuned")
    cells = result.cells.copy()
    languages = sorted(cells["language"].unique())
    betas = []
    for assignment in itertools.combinations(languages, 3):
        cells["related"] = cells["language"].isin(assignment).astype(float)
        betas.append(sm.OLS.from_formula("gain ~ related + baseline + C(model)", cells).fit().params["related"])
    betas = np.array(betas)
    assert result.perm_p_value == pytest.approx(np.mean(np.abs(betas) >= abs(result.estimate) - 1e-9))
    assert result.perm_p_greater == pytest.approx(np.mean(betas >= result.estimate - 1e-9))
    assert result.n_assignments == 20 and result.perm_exact
    assert result.perm_resolution == pytest.approx(1 / 20)
    assert result.perm_min_p == pytest.approx(2 / 20)  # an assignment and its complement tie
    assert "resolution 0.05" in result.summary and "3 vs 3 languages" in result.summary


def test_family_gap_monte_carlo_permutation_when_asked_for_fewer():
    items = simulate_study(n_models=2, n_related=5, n_control=5, n_questions=20, conditions=("baseline", "finetuned"), seed=6)
    exact = family_gap(items)
    sampled = family_gap(items, n_perm=99)
    assert exact.n_assignments == math.comb(10, 5) and exact.perm_exact
    assert sampled.n_assignments == 100 and not sampled.perm_exact
    assert sampled.perm_resolution == pytest.approx(0.01)
    assert abs(sampled.perm_p_value - exact.perm_p_value) < 0.15
    assert "Monte Carlo" in sampled.method


def test_family_gap_logit_gain_uses_empirical_logits(cells_study):
    cells = family_gap(cells_study).cells
    logit = lambda k, n: np.log((k + 0.5) / (n - k + 0.5))  # noqa: E731
    np.testing.assert_allclose(cells["gain"], logit(cells["k_finetuned"], cells["n"]) - logit(cells["k_baseline"], cells["n"]))


def test_family_gap_needs_two_languages_per_group():
    items = simulate_study(n_models=2, n_related=1, n_control=3, n_questions=20, seed=7)
    result = family_gap(items)
    assert result.estimate is None and "1 related and 3 control" in result.reason
    assert result.summary.startswith("Family-gap model not fitted")


# ---------------------------------------------------------------- mixed model

def test_mixed_model_describes_the_interaction_and_flags_narrow_intervals():
    items = simulate_study(n_models=2, n_questions=40, family_gap=1.5, language_gain_sd=0.1, seed=8,
                           conditions=("baseline", "finetuned"))
    result = mixed_model(items, "finetuned")
    assert result.reason is None
    assert result.interaction_mean > 0.3 and 0 < result.interaction_sd < 1
    assert result.intervals_too_narrow and "3 related and 3 control" in result.note
    assert result.formula == "correct ~ treated * related + C(model)"
    assert result.n_rows == 2 * 6 * 40 * 2


@pytest.mark.parametrize("shrink", ["one_language", "three_rows", "no_condition"])
def test_mixed_model_never_crashes_on_tiny_data(shrink):
    items = simulate_study(n_models=1, n_related=1, n_control=1, n_questions=4, seed=9)
    items = {
        "one_language": items[items["role"] == "related"],
        "three_rows": items.iloc[:3],
        "no_condition": items[items["condition"] == "baseline"],
    }[shrink]
    result = mixed_model(items, "finetuned")
    assert result.interaction_mean is None and result.interaction_sd is None and result.reason
    assert result.summary.startswith("Item-level mixed model not fitted")


# ---------------------------------------------------------------- task alignment

def test_task_alignment_matches_scipy_and_a_loop_bootstrap(cells_study):
    result = task_alignment(cells_study, n_boot=300, seed=4, n_splits=20)
    cells = result.cells
    x, y = cells["ft_gain"].to_numpy(), cells["cot_gain"].to_numpy()
    np.testing.assert_allclose(x, cells["acc_finetuned"] - cells["acc_baseline"])
    assert result.pearson_r == pytest.approx(stats.pearsonr(x, y).statistic)
    assert result.pearson_p == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert result.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert result.spearman_p == pytest.approx(stats.spearmanr(x, y).pvalue)
    idx = np.random.default_rng(4).integers(0, len(x), (300, len(x)))
    boot_r = [stats.pearsonr(x[i], y[i]).statistic for i in idx]
    boot_rho = [stats.spearmanr(x[i], y[i]).statistic for i in idx]
    assert (result.pearson_ci_low, result.pearson_ci_high) == pytest.approx(tuple(np.percentile(boot_r, [2.5, 97.5])))
    assert (result.spearman_ci_low, result.spearman_ci_high) == pytest.approx(tuple(np.percentile(boot_rho, [2.5, 97.5])))
    assert -1 <= result.split_half_pearson_r <= 1
    assert "Pearson r = " in result.summary and result.n_cells == 42


def test_task_alignment_without_cot_returns_a_reason(cells_study):
    result = task_alignment(cells_study[cells_study["condition"] != "cot"])
    assert result.pearson_r is None and result.reason == "condition(s) ['cot'] have no items"


def test_task_alignment_with_constant_gain_returns_a_reason(cells_study):
    flat = cells_study.copy()
    flat.loc[flat["condition"] != "cot", "correct"] = 1
    result = task_alignment(flat, n_boot=50, n_splits=5)
    assert result.pearson_r is None and "same in every cell" in result.reason


def test_holm_adjust_equals_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    from relxfer.compare.stats_accuracy import holm_adjust

    rng = np.random.default_rng(11)
    for size in (1, 2, 3, 6, 25):
        p = rng.uniform(0, 0.2, size=size)
        p[rng.random(size) < 0.3] = p[0]  # ties
        assert np.allclose(holm_adjust(p), multipletests(p, method="holm")[1], atol=1e-15)
