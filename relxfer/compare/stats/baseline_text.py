"""The words of the baseline-gain result: one plain sentence (`summary`), the technical account
(`detail`) and the method. Numbers come from `baseline.baseline_gain`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relxfer.compare.stats.common import fmt_num, is_missing

if TYPE_CHECKING:
    from relxfer.compare.stats.baseline_result import BaselineGainResult


def describe(result: BaselineGainResult) -> BaselineGainResult:
    """Fill `method`, `summary` and `detail` of a BaselineGainResult; returns it."""
    head = f"{result.condition} vs {result.reference}"
    se_text = {
        "CR2": "cells clustered by model (CR2, Bell-McCaffrey df)",
        "classical": "classical OLS standard errors",
        "": "no standard errors",
    }[result.se_kind]
    result.method = (
        f"Gain ({result.condition} - {result.reference}, {result.scale} scale) regressed on baseline across "
        f"model x language cells, seeds pooled. Lead: slope corrected for the baselines' measurement error "
        f"(noise variances from the passages removed from the normal equations), delete-one-"
        f"{result.corrected_clusters or 'model'} jackknife interval with t(G-1). Checks: split-half slope "
        f"(baseline from a random half of each language's passages, gain from the other half, mean over "
        f"{result.n_splits} splits, interval from the mean per-split variance, conservative) and naive "
        f"slope (both from all passages, not corrected); {se_text}. {result.method_note}"
    ).strip()
    if result.reason is not None:
        result.summary = f"{head}: baseline-gain slope not estimated: {result.reason}."
        result.detail = ""
        return result
    unit = "points" if result.scale == "raw" else "logits"
    per = f"{unit} of gain per {'point' if result.scale == 'raw' else 'logit'} of baseline"
    checks = (
        f"Checks: split-half slope {fmt_num(result.split_half_slope)} (95% CI "
        f"{fmt_num(result.split_half_slope_ci_low)} to {fmt_num(result.split_half_slope_ci_high)}; unbiased "
        f"without a relation but attenuated toward 0 and wide); naive slope {fmt_num(result.naive_slope)}, "
        f"which ignores measurement error."
    )
    if is_missing(result.corrected_slope):
        result.summary = (
            f"{head}: no slope of gain on baseline is estimated: {result.method_note}. "
            f"For reference only, the split-half slope is {fmt_num(result.split_half_slope)} {per}."
        )
        result.detail = checks
        return result
    slope = f"{fmt_num(result.corrected_slope)} {per}"
    interval = (
        f"95% CI {fmt_num(result.corrected_slope_ci_low)} to {fmt_num(result.corrected_slope_ci_high)}, "
        f"{result.n_models} model{'s' if result.n_models != 1 else ''}"
    )
    if result.conclusion == "below":
        lead = f"gains fell as baseline accuracy rose: {slope} ({interval}): a finding."
    elif result.conclusion == "above":
        lead = f"gains rose with baseline accuracy: {slope} ({interval}): a finding."
    else:
        lead = (
            f"no clear relation between baseline accuracy and gain: {slope} ({interval}): not a finding. "
            f"The design could have detected slopes of about {fmt_num(result.detectable_slope)} or steeper "
            f"(80% power), so a weaker relation is not ruled out."
        )
    result.summary = f"{head}: {lead}"
    result.detail = " ".join(
        [
            f"The slope is corrected for measurement error (reliability of the baselines across "
            f"{result.n_cells} cells {fmt_num(result.baseline_reliability)}), with a delete-one-"
            f"{result.corrected_clusters} jackknife interval, t({result.corrected_df:.0f}); a slope of "
            f"{fmt_num(result.detectable_slope)} would be detected with 80% power.",
            checks,
        ]
    )
    return result
