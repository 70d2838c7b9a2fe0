"""Per-run accuracy with passage-clustered intervals, and paired before/after comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from relxfer.errors import DataError

from ..intervals import cluster_mean_var, clustered_wilson, design_effect
from .stats_common import fmt_p, fmt_points
from .stats_data import paired_wide, require_conditions, validate_items

RUN_KEYS = ["model", "seed", "language", "condition"]
CELL_KEYS = ["model", "seed", "language"]
EXACT_BELOW = 25  # McNemar: exact binomial test when b + c < 25, chi-square otherwise


def accuracy_table(items: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Accuracy of every model x seed x language x condition, with a clustered interval.

    Questions that share a passage are correlated, so the interval treats passages as clusters.
    Method (a Korn & Graubard 1998 style interval): the CR1 cluster-robust variance of the
    mean, G/(G-1) * sum_g (S_g - p n_g)^2 / n^2 over the G passages, gives a design effect
    deff = var_cluster / (p(1-p)/n), floored at 1 so clustering never narrows the interval;
    the Wilson score interval is then computed on the effective sample size n / deff, further
    shrunk by (z / t_{G-1})^2 so the critical value reflects G-1 degrees of freedom. Wilson keeps
    the interval inside [0, 1] and sensible at 0% and 100% (where deff is taken as 1).

    Columns: model, seed, language, group, role, condition, accuracy, n_items, n_passages,
    ci_low, ci_high, design_effect, parse_failure_rate (share of predicted == -1), summary.
    """
    frame = validate_items(items)
    frame["unparsed"] = (frame["predicted"] == -1).astype(int)
    passages = (
        frame.groupby([*RUN_KEYS, "passage_id"])
        .agg(s=("correct", "sum"), m=("correct", "size"), u=("unparsed", "sum"))
        .reset_index()
    )
    rows = []
    for key, block in passages.groupby(RUN_KEYS, sort=True):
        n = block["m"].sum()
        p = block["s"].sum() / n
        deff = design_effect(block["s"].to_numpy(), block["m"].to_numpy(), p)
        low, high = clustered_wilson(p, n, deff, len(block), level)
        rows.append((*key, p, n, len(block), low, high, deff, block["u"].sum() / n))
    table = pd.DataFrame(rows, columns=[
        *RUN_KEYS, "accuracy", "n_items", "n_passages", "ci_low", "ci_high", "design_effect",
        "parse_failure_rate",
    ])
    table = _attach_labels(table, frame)
    table["summary"] = [
        f"{r.model} (seed {r.seed}), {r.language}, {r.condition}: {fmt_points(r.accuracy)}% "
        f"(95% CI {fmt_points(r.ci_low)} to {fmt_points(r.ci_high)}; "
        f"{r.n_items} questions in {r.n_passages} passages)"
        for r in table.itertuples()
    ]
    order = ["model", "seed", "language", "group", "role", "condition"]
    return table[order + [c for c in table.columns if c not in order]]


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: sorted ascending, p_(i) * (m - i), made monotone by a
    running maximum, capped at 1, returned in the input order. (Written out rather than calling
    statsmodels' multipletests, which runs a full garbage collection on every call: seconds per
    analysis once MLflow's objects fill the heap.)"""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def mcnemar_test(b: int, c: int) -> tuple[float, str]:
    """McNemar test on discordant counts b and c: exact two-sided binomial test when b + c < 25
    (min(1, 2 * P[Bin(b + c, 1/2) <= min(b, c)]), as statsmodels' exact=True), otherwise the
    chi-square test with continuity correction (|b - c| - 1)^2 / (b + c) on 1 df."""
    n = b + c
    if n < EXACT_BELOW:
        return float(min(1.0, 2 * stats.binom.cdf(min(b, c), n, 0.5))), "exact binomial"
    statistic = (abs(b - c) - 1) ** 2 / n
    return float(stats.chi2.sf(statistic, 1)), "chi-square (continuity corrected)"


def paired_gains(
    items: pd.DataFrame, condition: str, reference: str = "baseline", level: float = 0.95
) -> pd.DataFrame:
    """Gain of `condition` over `reference` per model x seed x language, item by item.

    Only items answered under both conditions count (paired on model, seed, language,
    question_id). The gain is the mean paired difference d = correct_cond - correct_ref; its
    interval uses the CR1 cluster-robust SE over passages with t(G-1) critical values, clipped
    to [-1, 1]. The McNemar test uses b = items right under the reference and wrong under the
    condition, c = the reverse (it treats items as independent, so for strongly clustered data
    trust the interval over the p-value). Holm's correction runs across the languages within
    each model x seed (`holm_adjust`, checked against statsmodels' multipletests in the tests).

    Columns: model, seed, language, group, role, condition, reference, n_pairs, n_passages,
    acc_ref, acc_cond, gain, ci_low, ci_high, b, c, test, p_value, p_holm, summary.
    """
    frame = validate_items(items)
    require_conditions(frame, [reference, condition])
    wide = paired_wide(frame, [reference, condition])
    if wide.empty:
        raise DataError(f"no item is answered under both {reference} and {condition} "
                        "(pairs need the same model, seed, language and question_id)")
    wide["d"] = wide[condition] - wide[reference]
    wide["b"] = ((wide[reference] == 1) & (wide[condition] == 0)).astype(int)
    wide["c"] = ((wide[reference] == 0) & (wide[condition] == 1)).astype(int)
    passages = wide.groupby([*CELL_KEYS, "passage_id"]).agg(s=("d", "sum"), m=("d", "size")).reset_index()
    rows = []
    # Both groupbys are sorted by the same keys, so they walk the cells in step.
    for (key, block), (_, per_passage) in zip(
        wide.groupby(CELL_KEYS, sort=True), passages.groupby(CELL_KEYS, sort=True)
    ):
        gain = block["d"].mean()
        low, high = _paired_interval(per_passage, gain, level)
        b, c = int(block["b"].sum()), int(block["c"].sum())
        p, test = mcnemar_test(b, c)
        rows.append((*key, len(block), len(per_passage), block[reference].mean(), block[condition].mean(),
                     gain, low, high, b, c, test, p))
    gains = pd.DataFrame(rows, columns=[
        *CELL_KEYS, "n_pairs", "n_passages", "acc_ref", "acc_cond", "gain", "ci_low", "ci_high",
        "b", "c", "test", "p_value",
    ])
    gains["condition"] = condition
    gains["reference"] = reference
    gains["p_holm"] = gains.groupby(["model", "seed"])["p_value"].transform(holm_adjust)
    gains = _attach_labels(gains, frame)
    gains["summary"] = [_gain_sentence(r) for r in gains.itertuples()]
    order = ["model", "seed", "language", "group", "role", "condition", "reference"]
    return gains[order + [c for c in gains.columns if c not in order]]


def accuracy_summary(table: pd.DataFrame) -> str:
    """One line over an accuracy_table: range of accuracies and typical interval width."""
    lo, hi = table.loc[table["accuracy"].idxmin()], table.loc[table["accuracy"].idxmax()]
    width = (table["ci_high"] - table["ci_low"]).median()
    return (
        f"Accuracy ranged from {fmt_points(lo.accuracy)}% ({lo.model}, {lo.language}, {lo.condition}) "
        f"to {fmt_points(hi.accuracy)}% ({hi.model}, {hi.language}, {hi.condition}) over {len(table)} runs; "
        f"a typical 95% interval spans {fmt_points(width)} points."
    )


def paired_gains_summary(gains: pd.DataFrame) -> str:
    """One line over a paired_gains table: how many comparisons survive Holm, gain range."""
    significant = gains["p_holm"] < 0.05
    up = int((significant & (gains["gain"] > 0)).sum())
    down = int((significant & (gains["gain"] < 0)).sum())
    condition, reference = gains["condition"].iloc[0], gains["reference"].iloc[0]
    return (
        f"{condition} vs {reference}: gains from {fmt_points(gains['gain'].min())} to "
        f"{fmt_points(gains['gain'].max())} points (median {fmt_points(gains['gain'].median())}) "
        f"over {len(gains)} model x seed x language pairs; {up} significant gains and {down} "
        f"significant losses after Holm correction (alpha 0.05)."
    )


def _paired_interval(per_passage: pd.DataFrame, gain: float, level: float):
    n_clusters = len(per_passage)
    if n_clusters < 2:
        return float("nan"), float("nan")
    se = np.sqrt(cluster_mean_var(per_passage["s"], per_passage["m"], gain))
    q = stats.t.ppf(0.5 + level / 2, n_clusters - 1)
    return float(max(-1.0, gain - q * se)), float(min(1.0, gain + q * se))


def _attach_labels(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    labels = frame.drop_duplicates("language").set_index("language")[["group", "role"]]
    return table.join(labels, on="language")


def _gain_sentence(r) -> str:
    verdict = "significant after Holm correction" if r.p_holm < 0.05 else "not significant after Holm correction"
    return (
        f"{r.model} (seed {r.seed}), {r.language}: {r.condition} {fmt_points(r.acc_cond)}% vs "
        f"{r.reference} {fmt_points(r.acc_ref)}%, gain {fmt_points(r.gain)} points "
        f"(95% CI {fmt_points(r.ci_low)} to {fmt_points(r.ci_high)}); McNemar b = {r.b}, c = {r.c}, "
        f"{r.test} {fmt_p(r.p_value)}, Holm {fmt_p(r.p_holm)}: {verdict}."
    )
