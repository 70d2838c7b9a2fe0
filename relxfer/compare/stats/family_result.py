"""What the family-gap analysis returns (`relxfer.compare.stats.family.family_gap`), apart from
the code that computes it and the code that words it (family_text.py), which both read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from relxfer.compare.stats.common import AnalysisResult

LEAD = "difference of mean gains within model (unadjusted); CR2 by language, Bell-McCaffrey df; exact permutation test"


@dataclass
class FamilyGapResult(AnalysisResult):
    """Related-minus-control gain difference within model (see `family_gap`)."""

    condition: str
    reference: str
    scale: str
    estimate: float | None = None
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    df: float | None = None
    p_value: float | None = None
    cr1_se: float | None = None
    cr1_p_value: float | None = None
    perm_p_value: float | None = None
    perm_p_greater: float | None = None
    perm_resolution: float | None = None
    perm_min_p: float | None = None
    n_assignments: int = 0
    perm_exact: bool = True
    conclusion: str | None = None  # above | below | none | inconclusive | refused
    # The gap this study's precision detects with 80% power, (t_{0.975} + t_{0.80}) * se on its
    # df; None when the exact test cannot reach p < 0.05 (then no gap is detectable).
    detectable_gap: float | None = None
    related_mean_gain: float | None = None  # raw proportions, descriptive
    control_mean_gain: float | None = None
    raw_gap: float | None = None
    baseline_difference: float | None = None  # related minus control mean baseline, raw
    adjustment: str | None = "cross-fitted"
    adjusted_estimate: float | None = None
    adjusted_ci_low: float | None = None
    adjusted_ci_high: float | None = None
    adjusted_p_value: float | None = None
    adjusted_perm_p_value: float | None = None
    baseline_reliability: float | None = None  # within model and family, full data
    adjustable_share: float | None = None  # share of a baseline effect the adjustment removes
    n_splits: int = 0
    n_related: int = 0
    n_control: int = 0
    n_cells: int = 0
    n_models: int = 0
    lead: str = LEAD
    method: str = ""
    summary: str = ""  # one plain sentence: what was compared, by how much, the interval, the verdict
    detail: str = ""  # the technical account behind it
    note: str = ""
    reason: str | None = None
    cells: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
