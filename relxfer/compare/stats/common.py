"""Pieces shared by the analyses: the result base class, the one rule for conclusions, and number
formatting for summaries."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

ALPHA = 0.05
# The report states this rule once; every verdict in it follows `conclusion`.
RULE = (
    "A difference counts as a finding only when its 95% interval excludes zero and its exact "
    "permutation test gives p < 0.05 (for per-language gains: the passage sign-flip test, and "
    "the p must stay below 0.05 after Holm's correction across the languages of a model). When "
    "the interval and the exact test disagree, the evidence is called inconclusive."
)


@dataclasses.dataclass
class AnalysisResult:
    """Base of every analysis result. `reason` is None when the analysis ran, otherwise it says
    why it could not (and the numeric fields are None)."""

    def as_record(self) -> dict[str, Any]:
        """Scalar fields only (no frames), e.g. to log as MLflow params and metrics."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), (pd.DataFrame, pd.Series, list, tuple, dict))
        }


def conclusion(
    ci_low: float, ci_high: float, exact_p: float | None, adjusted_p: float | None = None, alpha: float = ALPHA
) -> str:
    """The rule (`RULE`): "above" or "below" zero when the 95% interval excludes zero on that side
    and the exact test gives p < alpha, also after adjustment (`adjusted_p`, e.g. Holm's, when
    given); "inconclusive" when the interval and the unadjusted exact test disagree (one
    excludes zero, the other does not reject; a missing test counts as not rejecting);
    otherwise "none"."""
    side = "above" if ci_low > 0 else "below" if ci_high < 0 else None
    exact = known(exact_p)
    rejects = exact is not None and exact < alpha
    if (side is not None) != rejects:
        return "inconclusive"
    adjusted = known(adjusted_p)
    still = adjusted_p is None or (adjusted is not None and adjusted < alpha)
    return side if side is not None and still else "none"


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def known(value: float | None) -> float | None:
    """`value`, or None when it is missing (None or NaN)."""
    return None if value is None or math.isnan(value) else value


def fmt_p(p: float | None) -> str:
    """'p = 0.034', 'p < 0.001', 'p = 1.000': always three decimals."""
    value = known(p)
    if value is None:
        return "p = n/a"
    return f"p {fmt_p_value(value)}" if value < 0.001 else f"p = {fmt_p_value(value)}"


def fmt_p_value(p: float | None) -> str:
    """A p-value for a table cell: '0.034', '<0.001', '1.000', 'n/a'."""
    value = known(p)
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def fmt_points(value: float | None) -> str:
    """A proportion as percentage points, one decimal ('n/a' when missing)."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def fmt_num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_signed(value: float | None, scale: str) -> str:
    """+12.3 (points, from a proportion) or +0.45 (logits); 'n/a' when missing."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if scale == "raw" else f"{value:+.2f}"


def fmt_magnitude(value: float, scale: str) -> str:
    """'12.3 points' (from a proportion) or '0.45 logits'."""
    return f"{100 * value:.1f} points" if scale == "raw" else f"{value:.2f} logits"


def unit(scale: str) -> str:
    return "points" if scale == "raw" else "logits"


def compare_amounts(value: float | None, scale: str, subject: str, other: str, verb: str = "gained") -> str:
    """'related languages gained 12.3 points more than controls', '... 4.0 points less ...', or
    '... about as much as controls (difference below 0.05 points)' when it rounds to zero."""
    if value is None:
        return f"how much more {subject} {verb} than {other} is not known"
    shown = abs(100 * value) if scale == "raw" else abs(value)
    digits = 1 if scale == "raw" else 2
    if round(shown, digits) == 0:
        return f"{subject} {verb} about as much as {other} (difference below {0.5 * 10**-digits:g} {unit(scale)})"
    return f"{subject} {verb} {shown:.{digits}f} {unit(scale)} {'more' if value > 0 else 'less'} than {other}"


def interval_text(low: float | None, high: float | None, scale: str) -> str:
    """'95% CI +2.1 to +22.5 points'."""
    return f"95% CI {fmt_signed(low, scale)} to {fmt_signed(high, scale)} {unit(scale)}"


def seed_label(seed: int | str) -> str:
    """' (seed 3)', or '' for a seedless run (seed -1)."""
    return "" if int(seed) < 0 else f" (seed {int(seed)})"


def interval_verdict(low: float, high: float) -> str:
    """'above zero', 'below zero' or 'includes zero' for a 95% interval."""
    if low > 0:
        return "above zero"
    if high < 0:
        return "below zero"
    return "includes zero"
