"""The words of the family-gap result: one plain sentence (`summary`), the technical account
(`detail`) and the method. Numbers come from `family.family_gap`; nothing is computed here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relxfer.compare.stats.common import (
    compare_amounts,
    fmt_magnitude,
    fmt_p,
    fmt_points,
    interval_text,
    is_missing,
)

if TYPE_CHECKING:
    from relxfer.compare.stats.family_result import FamilyGapResult

MIN_LANGUAGES = 3  # family.MIN_LANGUAGES_PER_GROUP (repeated to keep the import one-way)


def describe(result: FamilyGapResult) -> FamilyGapResult:
    """Fill `method`, `summary` and `detail` of a FamilyGapResult; returns it."""
    head = f"{result.condition} vs {result.reference}"
    kind = "an exact" if result.perm_exact else "a Monte Carlo"
    result.method = (
        f"Cell-level regression over model x language cells (seeds pooled): gain ({result.condition} - "
        f"{result.reference}, {result.scale} scale) ~ related + model fixed effects, i.e. the mean "
        f"within-model difference of gains. Languages are the units: CR2 cluster-robust interval by "
        f"language with Bell-McCaffrey df (CR1 with t(G-1) beside it) and {kind} permutation test over "
        f"assignments of languages to groups of the observed sizes. Sensitivity analysis: "
        f"{_adjustment_name(result)}. " + result.note
    ).strip()
    if result.reason is not None:
        result.summary = f"{head}: family gap not estimated: {result.reason}."
        result.detail = ""
        return result
    means = (
        f"the related languages' mean gain was {fmt_points(result.related_mean_gain)} points, the "
        f"controls' {fmt_points(result.control_mean_gain)}"
    )  # raw points whatever the scale
    if result.conclusion == "refused":
        result.summary = (
            f"{head}: no family conclusion: {result.n_related} related vs {result.n_control} control "
            f"languages, and a comparison of families needs at least {MIN_LANGUAGES} languages a side. "
            f"Descriptive only: {means}."
        )
        result.detail = ""
        return result
    result.summary = (
        f"{head}: {compare_amounts(result.estimate, result.scale, 'related languages', 'controls')} "
        f"({interval_text(result.ci_low, result.ci_high, result.scale)}): {_verdict(result)}." + _ruled_out(result)
    )
    result.detail = " ".join(
        [
            f"The estimate is the mean within-model difference of gains over {result.n_cells} model x language "
            f"cells ({result.scale} scale), {result.n_related} vs {result.n_control} languages as the units of "
            f"replication: CR2 by language t({result.df:.1f}) {fmt_p(result.p_value)}; "
            f"{'exact' if result.perm_exact else 'Monte Carlo'} permutation test over {result.n_assignments} "
            f"assignments of languages to the groups {fmt_p(result.perm_p_value)} (smallest attainable "
            f"{result.perm_min_p:.3f}).",
            f"Descriptively, {means}; related languages started {_higher_lower(result.baseline_difference)} "
            f"at baseline.",
            _sensitivity_text(result),
        ]
    ).strip()
    return result


def _verdict(result: FamilyGapResult) -> str:
    p = fmt_p(result.perm_p_value)
    if result.conclusion == "above":
        return f"a finding: related languages gained more (exact permutation {p})"
    if result.conclusion == "below":
        return f"a finding: controls gained more (exact permutation {p})"
    if result.conclusion == "inconclusive":
        low, high = result.ci_low, result.ci_high
        if (low is not None and low > 0) or (high is not None and high < 0):
            return (
                f"inconclusive: the interval excludes zero but the exact permutation test does not reject "
                f"({p}){_unreachable(result)}"
            )
        return f"inconclusive: the exact permutation test rejects ({p}) but the interval includes zero"
    if _unreachable(result):
        return f"not a finding{_unreachable(result)}"
    return "not a finding"


def _ruled_out(result: FamilyGapResult) -> str:
    """For a gap that is not a finding: the largest edge the interval rules out, next to the
    gap this design could detect, so "no edge" reads as "no edge larger than X"."""
    if result.conclusion in ("above", "below"):
        return ""
    low, high = result.ci_low, result.ci_high
    if low is None or high is None or high <= 0 or low >= 0:
        return ""  # no interval, or it lies on one side: its verdict already says where
    ruled = (
        f" The data rule out an edge for related languages larger than {fmt_magnitude(high, result.scale)} "
        f"and for controls larger than {fmt_magnitude(-low, result.scale)} (the interval's bounds)"
    )
    if result.detectable_gap is None:
        return ruled + "; no gap is detectable with this many languages."
    return ruled + (
        f"; at this study's precision a gap of about {fmt_magnitude(result.detectable_gap, result.scale)} would be "
        f"detected with 80% power (`relxfer plan` estimates this before a study runs)."
    )


def _unreachable(result: FamilyGapResult) -> str:
    """Why no finding is possible when the permutation test cannot reach p < 0.05."""
    if result.perm_min_p is None or result.perm_min_p < 0.05:
        return ""
    return (
        f"; with {result.n_related} vs {result.n_control} languages no finding is possible: the exact "
        f"permutation test's smallest possible p is {result.perm_min_p:.3f}"
    )


def _higher_lower(difference: float | None) -> str:
    if difference is None:
        return "at a level not known"
    points = f"{abs(100 * difference):.1f} points"
    if round(abs(100 * difference), 1) == 0:
        return "at the same level"
    return f"{points} {'higher' if difference > 0 else 'lower'}"


def _adjustment_name(result: FamilyGapResult) -> str:
    return {
        "cross-fitted": "the same regression with the baseline as covariate, cross-fitted (baseline from one half "
        "of each language's passages, gain from the other, both ways, stacked over random "
        "splits, CR2 by language)",
        "measured": "the same regression with the measured baseline as covariate (biased toward the family "
        "with the higher baseline; for comparison only)",
        None: "none",
    }[result.adjustment]


def _sensitivity_text(result: FamilyGapResult) -> str:
    if result.adjustment is None or is_missing(result.adjusted_estimate):
        return result.note
    label = (
        "cross-fitted over " + f"{result.n_splits} passage splits"
        if result.adjustment == "cross-fitted"
        else "measured"
    )
    amount = compare_amounts(result.adjusted_estimate, result.scale, "related languages", "controls")
    text = (
        f"Sensitivity analysis, not a conclusion: adjusted for baseline ({label}), {amount} "
        f"({interval_text(result.adjusted_ci_low, result.adjusted_ci_high, result.scale)}, permutation "
        f"{fmt_p(result.adjusted_perm_p_value)})."
    )
    if result.adjustable_share is not None:
        text += (
            f" Within a model and family the baseline's reliability is {result.baseline_reliability:.2f} "
            f"(the share of its spread that is not measurement noise), so this adjustment removes about "
            f"{100 * result.adjustable_share:.0f}% of any effect the starting level has on gains."
        )
    return text
