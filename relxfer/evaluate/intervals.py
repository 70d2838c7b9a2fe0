"""Intervals for an accuracy when items come in clusters (Belebele questions share passages).
One implementation, used by the per-run metrics and by `relxfer compare`."""

from __future__ import annotations

import numpy as np
from scipy import stats


def cluster_mean_var(sums, counts, mean) -> float:
    """CR1 variance of a mean over clusters: G/(G-1) * sum_g (S_g - mean * n_g)^2 / N^2.

    `sums` and `counts` are per-cluster totals and sizes. This is the intercept-only case of a
    CR1 cluster-robust OLS (there (N-1)/(N-K) = 1), i.e. what statsmodels reports for
    OLS(y, 1).fit(cov_type="cluster"). NaN with fewer than 2 clusters.
    """
    sums = np.asarray(sums, dtype=float)
    counts = np.asarray(counts, dtype=float)
    n_clusters = len(sums)
    if n_clusters < 2:
        return float("nan")
    total = counts.sum()
    return float(n_clusters / (n_clusters - 1) * np.sum((sums - mean * counts) ** 2) / total**2)


def design_effect(sums, counts, p: float) -> float:
    """Clustered variance of the mean over the binomial one, floored at 1 (clustering never
    narrows the interval); 1 at 0% or 100% or with fewer than 2 clusters."""
    counts = np.asarray(counts, dtype=float)
    if p <= 0 or p >= 1 or len(counts) < 2:
        return 1.0
    return float(max(1.0, cluster_mean_var(sums, counts, p) / (p * (1 - p) / counts.sum())))


def clustered_wilson(p: float, n: int, deff: float, n_clusters: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson interval for proportion p on n items with the effective sample size
    n / deff * (z / t_{G-1})^2, so the critical value reflects G-1 degrees of freedom
    (a Korn & Graubard 1998 style interval). NaN when fewer than 2 clusters."""
    if n_clusters < 2:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    t = stats.t.ppf(0.5 + level / 2, n_clusters - 1)
    n_eff = n / deff * (z / t) ** 2
    centre = (p + z**2 / (2 * n_eff)) / (1 + z**2 / n_eff)
    half = z * np.sqrt(p * (1 - p) / n_eff + z**2 / (4 * n_eff**2)) / (1 + z**2 / n_eff)
    # At 0% (100%) the Wilson bound is 0 (1) up to rounding: close it exactly.
    low = 0.0 if p <= 0 else float(max(0.0, centre - half))
    high = 1.0 if p >= 1 else float(min(1.0, centre + half))
    return low, high


def clustered_accuracy_interval(correct, clusters, level: float = 0.95) -> tuple[float, float]:
    """The clustered Wilson interval of the mean of 0/1 outcomes grouped by `clusters`."""
    y = np.asarray(correct, dtype=float)
    if y.size == 0:
        return float("nan"), float("nan")
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(index.max()) + 1
    sums = np.bincount(index, weights=y, minlength=n_clusters)
    counts = np.bincount(index, minlength=n_clusters)
    p = float(y.mean())
    return clustered_wilson(p, y.size, design_effect(sums, counts, p), n_clusters, level)
