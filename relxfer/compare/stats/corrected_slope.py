"""The slope of gain on baseline, corrected for the baselines' measurement error.

Across model x language cells, measured baseline b = B + e and measured gain g = G + f - e
(f the noise of the condition's accuracy). The naive least-squares slope of g on b estimates
(cov(G, B) + cov(e, f) - var(e)) / (var(B) + var(e)): pulled down by the shared -e (regression
to the mean) and shrunk by var(e) (attenuation). With the per-cell moments v = var(e) and
w = cov(e, f) (`measurement.error_moments`, estimated from the passages) both are removed from
the normal equations (Fuller 1987, "Measurement Error Models", section 2.2):

    (X'X - S) beta = X'g - s,   S = sum(v) at the baseline's diagonal entry,
                                 s = sum(w - v) at the baseline's entry,

with X = [1, b]. It uses every passage for both quantities, so it keeps the power the
split-half slope gives away. The interval is a delete-one-cluster jackknife (clusters: models
when there are at least 3, else languages) with t(G-1): each replicate re-estimates the
correction, so the interval carries the uncertainty of v and w too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

POWER = 0.80  # for the smallest slope the design could detect


@dataclass(frozen=True)
class CorrectedSlope:
    slope: float
    intercept: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    detectable: float  # the slope detectable with POWER at the 5% level, given this se and df
    n_clusters: int


def corrected_coefficients(
    b: npt.ArrayLike, g: npt.ArrayLike, v: npt.ArrayLike, w: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """[intercept, slope] solving the corrected normal equations (NaN when they are singular,
    e.g. when the baselines vary less than their noise)."""
    X = np.column_stack([np.ones(np.shape(b)[0]), b])
    S = np.array([[0.0, 0.0], [0.0, float(np.sum(v))]])
    s = np.array([0.0, float(np.sum(np.asarray(w) - np.asarray(v)))])
    try:
        return np.asarray(np.linalg.solve(X.T @ X - S, X.T @ np.asarray(g, dtype=float) - s), dtype=float)
    except np.linalg.LinAlgError:
        return np.full(2, np.nan)


def corrected_slope(
    b: npt.ArrayLike,
    g: npt.ArrayLike,
    v: npt.ArrayLike,
    w: npt.ArrayLike,
    clusters: npt.ArrayLike,
    level: float = 0.95,
) -> CorrectedSlope:
    """The corrected slope with its jackknife interval over `clusters` (one label per cell) and
    the smallest slope detectable with 80% power: (t_{1-alpha/2} + t_{power}) * se on G-1 df."""
    bs, gs, vs, ws = (np.asarray(x, dtype=float) for x in (b, g, v, w))
    labels_of = np.asarray(clusters)
    intercept, slope = corrected_coefficients(bs, gs, vs, ws)
    labels = sorted(set(labels_of.tolist()))
    replicates = np.array(
        [
            corrected_coefficients(bs[labels_of != c], gs[labels_of != c], vs[labels_of != c], ws[labels_of != c])[1]
            for c in labels
        ]
    )
    G = len(labels)
    se = float(np.sqrt((G - 1) / G * np.sum((replicates - replicates.mean()) ** 2))) if G > 1 else float("nan")
    df = float(G - 1)
    q = stats.t.ppf(0.5 + level / 2, df)
    detectable = float((q + stats.t.ppf(POWER, df)) * se)
    return CorrectedSlope(
        float(slope), float(intercept), se, df, float(slope - q * se), float(slope + q * se), detectable, G
    )
