"""Paired before/after comparisons per model x seed x language: the gain with a passage-clustered
interval, the exact passage sign-flip test (`signflip.py`), Holm's correction across languages,
and the verdict of the report's one rule (`common.conclusion`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from relxfer.compare.stats.accuracy import attach_labels
from relxfer.compare.stats.common import conclusion, fmt_p, fmt_points, seed_label
from relxfer.compare.stats.data import (
    collapse_seedless,
    paired_wide,
    require_conditions,
    validate_items,
)
from relxfer.compare.stats.signflip import signflip_p
from relxfer.errors import DataError
from relxfer.evaluate.intervals import cluster_mean_var

CELL_KEYS = ["model", "seed", "language"]
EXACT_BELOW = 25  # McNemar: exact binomial test when b + c < 25, chi-square otherwise
TEST_NAME = "passage sign-flip (exact)"


def holm_adjust(p_values: npt.ArrayLike) -> np.ndarray:
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
    chi-square test with continuity correction (|b - c| - 1)^2 / (b + c) on 1 df. It treats the
    questions as independent; the report uses `signflip.signflip_p` instead, and this remains for
    comparison (bench/compare_simulations.py) and checks."""
    n = b + c
    if n < EXACT_BELOW:
        return float(min(1.0, 2 * stats.binom.cdf(min(b, c), n, 0.5))), "exact binomial"
    statistic = (abs(b - c) - 1) ** 2 / n
    return float(stats.chi2.sf(statistic, 1)), "chi-square (continuity corrected)"


def paired_gains(items: pd.DataFrame, condition: str, reference: str = "baseline", level: float = 0.95) -> pd.DataFrame:
    """Gain of `condition` over `reference` per model x seed x language, item by item.

    Only items answered under both conditions count (paired on model, seed, language,
    question_id); when both conditions are seedless (e.g. cot vs baseline) each pair appears
    once, with seed -1. The gain is the mean paired difference d = correct_cond - correct_ref;
    its interval uses the CR1 cluster-robust SE over passages with t(G-1) critical values,
    clipped to [-1, 1]. b = items right under the reference and wrong under the condition,
    c = the reverse. The test is the exact passage sign-flip test (`signflip.signflip_p`: McNemar's
    exact test generalised to questions in passages, which McNemar's own test ignores); Holm's
    correction runs across the languages within each model x seed (`holm_adjust`, checked
    against statsmodels' multipletests in the tests). `verdict` applies the report's rule
    (`common.conclusion`) to the interval, the exact p and the Holm-adjusted p: "above",
    "below", "none" or "inconclusive".

    Columns: model, seed, language, group, role, condition, reference, n_pairs, n_passages,
    acc_ref, acc_cond, gain, ci_low, ci_high, b, c, test, p_value, p_holm, verdict, summary.
    """
    frame = validate_items(items)
    require_conditions(frame, [reference, condition])
    frame = collapse_seedless(frame, [reference, condition])
    wide = paired_wide(frame, [reference, condition])
    if wide.empty:
        raise DataError(
            f"no item is answered under both {reference} and {condition} "
            "(pairs need the same model, seed, language and question_id)"
        )
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
        p = signflip_p(per_passage["s"].to_numpy())
        rows.append(
            (
                *key,
                len(block),
                len(per_passage),
                block[reference].mean(),
                block[condition].mean(),
                gain,
                low,
                high,
                b,
                c,
                TEST_NAME,
                p,
            )
        )
    gains = pd.DataFrame(
        rows,
        columns=[
            *CELL_KEYS,
            "n_pairs",
            "n_passages",
            "acc_ref",
            "acc_cond",
            "gain",
            "ci_low",
            "ci_high",
            "b",
            "c",
            "test",
            "p_value",
        ],
    )
    gains["condition"] = condition
    gains["reference"] = reference
    gains["p_holm"] = gains.groupby(["model", "seed"])["p_value"].transform(holm_adjust)
    gains["verdict"] = [
        conclusion(lo, hi, p, holm)
        for lo, hi, p, holm in zip(gains["ci_low"], gains["ci_high"], gains["p_value"], gains["p_holm"])
    ]
    gains = attach_labels(gains, frame)
    gains["summary"] = [_gain_sentence(r) for r in gains.itertuples()]
    order = ["model", "seed", "language", "group", "role", "condition", "reference"]
    return gains[order + [c for c in gains.columns if c not in order]]


def paired_gains_summary(gains: pd.DataFrame) -> str:
    """One line over a paired_gains table: how many comparisons are findings under the rule."""
    up = int((gains["verdict"] == "above").sum())
    down = int((gains["verdict"] == "below").sum())
    unclear = int((gains["verdict"] == "inconclusive").sum())
    condition, reference = gains["condition"].iloc[0], gains["reference"].iloc[0]
    return (
        f"{condition} vs {reference}: gains from {fmt_points(gains['gain'].min())} to "
        f"{fmt_points(gains['gain'].max())} points (median {fmt_points(gains['gain'].median())}) "
        f"over {len(gains)} model x language pairs; {up} significant gains, {down} significant losses"
        f"{f' and {unclear} inconclusive' if unclear else ''} (passage sign-flip test, Holm across "
        f"languages, alpha 0.05, and a 95% interval on the same side of zero)."
    )


def _paired_interval(per_passage: pd.DataFrame, gain: float, level: float) -> tuple[float, float]:
    n_clusters = len(per_passage)
    if n_clusters < 2:
        return float("nan"), float("nan")
    se = np.sqrt(cluster_mean_var(per_passage["s"], per_passage["m"], gain))
    q = stats.t.ppf(0.5 + level / 2, n_clusters - 1)
    return float(max(-1.0, gain - q * se)), float(min(1.0, gain + q * se))


VERDICTS = {
    "above": "a significant gain",
    "below": "a significant loss",
    "none": "not significant",
    "inconclusive": "inconclusive (the interval and the exact test disagree)",
}


def _gain_sentence(r: Any) -> str:  # a row of the gains frame (DataFrame.itertuples)
    return (
        f"{r.model}{seed_label(r.seed)}, {r.language}: {r.condition} {fmt_points(r.acc_cond)}% vs "
        f"{r.reference} {fmt_points(r.acc_ref)}%, gain {fmt_points(r.gain)} points "
        f"(95% CI {fmt_points(r.ci_low)} to {fmt_points(r.ci_high)}): {VERDICTS[r.verdict]}. "
        f"{r.b} questions went from right to wrong, {r.c} from wrong to right; {r.test} {fmt_p(r.p_value)}, "
        f"Holm {fmt_p(r.p_holm)}."
    )
