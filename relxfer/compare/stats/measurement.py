"""How noisy is a cell's measured baseline, and how does its noise enter the measured gain?

A model x language cell's baseline accuracy b is measured on ~100 questions: b = B + e, with B
the accuracy the model would have on these questions in the long run. The gain g = a - b shares
-e, so regressing g on b couples their noises (regression to the mean) and e also attenuates any
true relation with B. Both are corrected with two per-cell moments, estimated from the passages
(questions of one passage are answered together, so passages are the independent units):

    v_c = var(e_c)              = G/(G-1) sum_p (S0_p - b n_p)^2 / N^2
    w_c = cov(e_c, noise of a)  = G/(G-1) sum_p (S0_p - b n_p)(S1_p - a n_p) / N^2

(S0_p, S1_p: right answers in passage p before and after; n_p its questions; G passages; N
questions; seeds pooled with a passage's questions over all seeds in one cluster). These are the
per-cell version of split-half reliability: the variance of the difference between two halves
of the passages estimates 4 v_c, and the reliability of the baselines across cells is
1 - mean(v) / var(b). On the logit scale both are carried by the delta method,
d logit(p) / dp = 1 / (p (1 - p)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relxfer.compare.stats.data import passage_totals


def error_moments(
    wide: pd.DataFrame, cells: pd.DataFrame, reference: str, condition: str, scale: str = "raw"
) -> tuple[np.ndarray, np.ndarray]:
    """(v, w) for each row of `cells` (cell_table order): the sampling variance of the measured
    baseline and its covariance with the measured `condition` accuracy, on `scale`."""
    totals, _, _, _ = passage_totals(wide, cells, [reference, condition])
    n_p = totals["n"]
    total = n_p.sum(axis=1)
    v, w = passage_moments(n_p, totals[reference], totals[condition])
    if scale == "logit":
        k0, k1 = cells[f"k_{reference}"].to_numpy(float), cells[f"k_{condition}"].to_numpy(float)
        d0, d1 = _logit_slope(k0, total), _logit_slope(k1, total)
        return v * d0**2, w * d0 * d1
    if scale != "raw":
        raise ValueError(f"scale must be 'raw' or 'logit', not {scale!r}")
    return v, w


def passage_moments(n_p: np.ndarray, s0: np.ndarray, s1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, w) on the raw scale from per-passage item counts `n_p` and right answers `s0`
    (reference) and `s1` (condition), passages on the last axis (any leading axes: one cell
    each; passages with no items count for nothing)."""
    total = n_p.sum(axis=-1)
    p0, p1 = s0.sum(axis=-1) / total, s1.sum(axis=-1) / total
    r0, r1 = s0 - p0[..., None] * n_p, s1 - p1[..., None] * n_p
    clusters = (n_p > 0).sum(axis=-1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(clusters > 1, clusters / (clusters - 1), np.nan) / total**2
    return factor * np.sum(r0 * r0, axis=-1), factor * np.sum(r0 * r1, axis=-1)


def _logit_slope(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """d logit(p) / dp at the empirical-logit proportion (k + 0.5) / (n + 1)."""
    p = (k + 0.5) / (n + 1)
    return np.asarray(1 / (p * (1 - p)))


def reliability(measured: np.ndarray, v: np.ndarray) -> float:
    """Share of the variance of `measured` across cells that is not measurement noise:
    1 - mean(v) / var(measured) (can be <= 0 when noise swamps the spread)."""
    spread = float(np.var(measured, ddof=1))
    return float(1 - np.mean(v) / spread) if spread > 0 else float("nan")
