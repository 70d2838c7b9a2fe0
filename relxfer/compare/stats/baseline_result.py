"""What the baseline-gain analysis returns (`relxfer.compare.stats.baseline.baseline_gain`), apart
from the code that computes it and the code that words it (baseline_text.py), which both read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from relxfer.compare.stats.common import AnalysisResult


@dataclass
class BaselineGainResult(AnalysisResult):
    """Corrected, naive and split-half regressions of gain on baseline (see `baseline_gain`)."""

    condition: str
    reference: str
    scale: str
    n_cells: int = 0
    n_models: int = 0
    n_languages: int = 0
    corrected_slope: float | None = None
    corrected_slope_ci_low: float | None = None
    corrected_slope_ci_high: float | None = None
    corrected_slope_se: float | None = None
    corrected_intercept: float | None = None
    corrected_df: float | None = None
    corrected_clusters: str = ""  # "model" or "language": what the jackknife leaves out
    detectable_slope: float | None = None  # |slope| detectable with 80% power at the 5% level
    baseline_reliability: float | None = None  # across cells
    conclusion: str | None = None  # above | below | none (from the corrected slope's interval)
    naive_slope: float | None = None
    naive_slope_ci_low: float | None = None
    naive_slope_ci_high: float | None = None
    naive_intercept: float | None = None
    naive_intercept_ci_low: float | None = None
    naive_intercept_ci_high: float | None = None
    split_half_slope: float | None = None
    split_half_slope_ci_low: float | None = None
    split_half_slope_ci_high: float | None = None
    split_half_intercept: float | None = None
    split_half_intercept_ci_low: float | None = None
    split_half_intercept_ci_high: float | None = None
    split_slope_spread_low: float | None = None
    split_slope_spread_high: float | None = None
    n_splits: int = 0
    method_note: str = ""
    se_kind: str = ""
    lead: str = "corrected"
    method: str = ""
    summary: str = ""  # one plain sentence
    detail: str = ""
    reason: str | None = None
    cells: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
