"""Pieces shared by the analyses: the result base class and number formatting for summaries."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd


@dataclasses.dataclass
class AnalysisResult:
    """Base of every analysis result. `reason` is None when the analysis ran, otherwise it says
    why it could not (and the numeric fields are None)."""

    def as_record(self) -> dict:
        """Scalar fields only (no frames), e.g. to log as MLflow params and metrics."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), (pd.DataFrame, pd.Series, list, tuple, dict))
        }


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def fmt_points(value: float) -> str:
    """A proportion as percentage points, one decimal."""
    return f"{100 * value:.1f}"


def fmt_num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def interval_verdict(low: float, high: float) -> str:
    """'above zero', 'below zero' or 'includes zero' for a 95% interval."""
    if low > 0:
        return "above zero"
    if high < 0:
        return "below zero"
    return "includes zero"
