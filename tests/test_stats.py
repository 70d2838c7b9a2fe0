"""The item-level statistics of relxfer.compare.stats (input contract, accuracy table, paired
gains with the passage sign-flip test, Holm, cluster-robust OLS, mixed model, task alignment)
checked against independent statsmodels / scipy computations on simulated data. The cell-level
models (family gap, baseline-gain slope) are in test_stats_models.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from relxfer.compare.stats import (
    accuracy_summary,
    accuracy_table,
    baseline_gain,
    family_gap,
    holm_adjust,
    mcnemar_test,
    mixed_model,
    ols,
    paired_gains,
    paired_gains_summary,
    signflip_p,
    task_alignment,
)
from relxfer.compare.stats.common import conclusion
from relxfer.compare.stats.data import paired_wide, validate_items
from relxfer.errors import DataError
from tests.recompute import signflip_by_enumeration
from tests.support.simulate import simulate_study

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    """3 models x (3 related + 3 control) x 40 questions in 4-question passages x 2 seeds, with
    correlated answers within passages so clustering matters."""
    return simulate_study(
        n_models=3, n_questions=40, questions_per_passage=4, n_seeds=2, baseline_noise=0.6, family_gap=0.5, seed=11
    )


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
    with pytest.raises(
        DataError, match=r"\['finetuned_cot'\] not in the items; available: \['baseline', 'cot', 'finetuned'\]"
    ):
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


def one_row_per_run(items: pd.DataFrame) -> pd.DataFrame:
    """The items with each seedless run once, labelled seed -1 (as the runner's cells.json)."""
    runs = items.drop_duplicates(["run_id", "question_id"]).copy()
    runs.loc[runs["seedless"], "seed"] = -1
    return runs


def test_accuracy_matches_group_means_and_counts(study):
    table = accuracy_table(study)
    runs = one_row_per_run(study)
    expected = runs.groupby(["model", "seed", "language", "condition"]).agg(
        acc=("correct", "mean"),
        n=("correct", "size"),
        passages=("passage_id", "nunique"),
        unparsed=("extracted", lambda e: (e == -1).mean()),
    )
    merged = table.join(expected, on=["model", "seed", "language", "condition"])
    # Baseline and CoT are seedless (seed -1, once); fine-tuned runs once per seed.
    assert len(table) == 3 * 6 * (1 + 1 + 2) and len(merged) == len(expected)
    assert set(table.loc[table["condition"] != "finetuned", "seed"]) == {-1}
    np.testing.assert_allclose(merged["accuracy"], merged["acc"])
    assert (merged["n_items"] == merged["n"]).all() and (merged["n_passages"] == merged["passages"]).all()
    cot = merged["condition"] == "cot"
    np.testing.assert_allclose(merged.loc[cot, "parse_failure_rate"], merged.loc[cot, "unparsed"])
    assert merged.loc[cot, "parse_failure_rate"].gt(0).any(), "the fixture has unparsed CoT answers"
    assert table.loc[~cot.to_numpy(), "parse_failure_rate"].isna().all()  # no reasoning, no parse rate


def test_a_high_parse_failure_rate_is_flagged(study):
    failing = study.copy()
    cot = failing["condition"] == "cot"
    failing.loc[cot & (failing["language"] == "heb_Hebr"), "extracted"] = -1
    table = accuracy_table(failing)
    flagged = table[table["parse_failure_high"]]
    assert set(flagged["language"]) == {"heb_Hebr"} and set(flagged["condition"]) == {"cot"}
    assert (flagged["parse_failure_rate"] == 1).all()
    assert flagged["summary"].str.endswith("100.0% of the reasoning texts gave no parseable answer").all()
    assert "Warning: cot: 3 of 18 runs had no parseable answer" in accuracy_summary(table)


def test_accuracy_interval_matches_statsmodels_cluster_se_and_wilson(study):
    table = accuracy_table(study)
    assert (table["design_effect"] > 1).any(), "fixture should have clustered answers"
    runs = one_row_per_run(study)
    for row in table.iloc[::5].itertuples():
        items = runs[
            (runs["model"] == row.model)
            & (runs["seed"] == row.seed)
            & (runs["language"] == row.language)
            & (runs["condition"] == row.condition)
        ]
        y = items["correct"].to_numpy(float)
        fit = sm.OLS(y, np.ones_like(y)).fit(
            cov_type="cluster", cov_kwds={"groups": pd.factorize(items["passage_id"])[0]}
        )
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
    items = simulate_study(n_models=1, n_related=1, n_control=1, n_questions=40, conditions=("baseline",), seed=2)
    items["correct"] = (items["question_id"].str[-1].astype(int) % 2 == 0).astype(int)
    table = accuracy_table(items)
    n_eff = 40 * (stats.norm.ppf(0.975) / stats.t.ppf(0.975, 19)) ** 2
    assert (table["design_effect"] == 1).all()
    for row in table.itertuples():
        assert (row.ci_low, row.ci_high) == pytest.approx(proportion_confint(0.5 * n_eff, n_eff, method="wilson"))


def test_clustering_widens_the_interval_relative_to_independent_items():
    items = simulate_study(
        n_models=1, n_questions=60, questions_per_passage=6, baseline_noise=1.0, conditions=("baseline",), seed=3
    )
    table = accuracy_table(items)
    plain = [proportion_confint(r.accuracy * r.n_items, r.n_items, method="wilson") for r in table.itertuples()]
    widths = table["ci_high"] - table["ci_low"]
    assert (widths.to_numpy() > np.array([high - low for low, high in plain])).all()
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


@pytest.mark.parametrize("b, c", [(0, 0), (3, 9), (12, 12), (2, 22), (5, 1)])
def test_signflip_with_one_question_per_passage_is_exact_mcnemar(b, c):
    passages = [1] * c + [-1] * b
    assert signflip_p(passages) == pytest.approx(mcnemar([[50, b], [c, 50]], exact=True).pvalue, rel=1e-12)


def test_signflip_matches_enumeration_with_passages_of_several_questions():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sums = rng.integers(-4, 5, size=rng.integers(1, 14))
        assert signflip_p(sums) == pytest.approx(signflip_by_enumeration(sums), abs=1e-12)


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
        d = (wide["finetuned"] - wide["baseline"]).to_numpy(float)
        assert row.p_value == pytest.approx(
            signflip_by_enumeration(pd.Series(d).groupby(passage.to_numpy()).sum()), abs=1e-12
        )
        fit = sm.OLS(d, np.ones_like(d)).fit(
            cov_type="cluster", use_t=True, cov_kwds={"groups": pd.factorize(passage)[0]}
        )
        low, high = fit.conf_int()[0]
        assert row.gain == pytest.approx(d.mean())
        assert (row.ci_low, row.ci_high) == pytest.approx((max(-1, low), min(1, high)), abs=1e-12)
        assert row.acc_ref == pytest.approx(wide["baseline"].mean())
    for _, block in gains.groupby(["model", "seed"]):
        np.testing.assert_allclose(block["p_holm"], _holm(block["p_value"].to_numpy()))
    expected = [conclusion(r.ci_low, r.ci_high, r.p_value, r.p_holm) for r in gains.itertuples()]
    assert gains["verdict"].tolist() == expected


def test_seedless_pairs_appear_once_without_a_seed(study):
    cot = paired_gains(study, "cot")
    assert len(cot) == 3 * 6 and set(cot["seed"]) == {-1}
    assert not cot["summary"].str.contains("seed").any()
    finetuned = paired_gains(study, "finetuned")
    assert set(finetuned["seed"]) == {0, 1} and finetuned["summary"].str.contains(r"\(seed [01]\)").all()


def test_paired_gains_summaries(study):
    gains = paired_gains(study, "cot")
    assert gains["summary"].str.contains("questions went from right to wrong").all()
    assert gains["summary"].str.contains("passage sign-flip").all()
    assert gains["reference"].eq("baseline").all() and gains["condition"].eq("cot").all()
    line = paired_gains_summary(gains)
    assert line.startswith("cot vs baseline: gains from") and "Holm" in line


@pytest.mark.parametrize(
    "low, high, p, holm, verdict",
    [
        (0.02, 0.2, 0.01, 0.03, "above"),
        (-0.3, -0.1, 0.001, 0.004, "below"),
        (0.02, 0.2, 0.01, 0.2, "none"),  # significant alone, not after Holm: no finding
        (0.02, 0.2, 0.08, 0.2, "inconclusive"),  # interval excludes zero, the exact test does not reject
        (-0.1, 0.2, 0.03, 0.03, "inconclusive"),  # the exact test rejects, the interval includes zero
        (-0.1, 0.2, 0.4, 1.0, "none"),
    ],
)
def test_the_rule_for_conclusions(low, high, p, holm, verdict):
    assert conclusion(low, high, p, holm) == verdict


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


# ---------------------------------------------------------------- mixed model


def test_mixed_model_describes_the_interaction_and_flags_narrow_intervals():
    items = simulate_study(
        n_models=2, n_questions=40, family_gap=1.5, language_gain_sd=0.1, seed=8, conditions=("baseline", "finetuned")
    )
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
    assert result.summary.startswith("finetuned vs baseline: item-level mixed model not fitted")


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
    assert (result.spearman_ci_low, result.spearman_ci_high) == pytest.approx(
        tuple(np.percentile(boot_rho, [2.5, 97.5]))
    )
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

    rng = np.random.default_rng(11)
    for size in (1, 2, 3, 6, 25):
        p = rng.uniform(0, 0.2, size=size)
        p[rng.random(size) < 0.3] = p[0]  # ties
        assert np.allclose(holm_adjust(p), multipletests(p, method="holm")[1], atol=1e-15)
