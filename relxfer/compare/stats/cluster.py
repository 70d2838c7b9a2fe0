"""Least squares with cluster-robust standard errors, and the cluster-robust SE of a mean.

The analyses in `relxfer.compare` regress cell-level gains on a handful of covariates where the
observations are not independent: cells of one language share that language's idiosyncrasies,
questions of one passage share the passage. A sandwich ("cluster-robust") variance lets the
residuals correlate arbitrarily within a cluster. With few clusters (6 languages, 7 models) the
plain sandwich (CR0) is biased downwards, so two small-sample versions are offered:

- CR1: CR0 times G/(G-1) * (N-1)/(N-K) (the Stata / statsmodels default), with t(G-1) tests.
- CR2 (Bell & McCaffrey 2002): each cluster's residuals are rescaled by (I - H_gg)^(-1/2), which
  makes the variance unbiased when the errors are in fact independent and homoskedastic; tests
  use the Bell-McCaffrey degrees of freedom (Imbens & Kolesar 2016, "Robust standard errors in
  small samples"), which can be much smaller than G-1 when a few clusters carry the contrast.
  For a difference of two group means with equal-sized clusters, CR2 equals the Welch variance
  of the cluster means and the Bell-McCaffrey df equals Welch's df with equal variances
  (4 for 3 vs 3 clusters): this is the estimator the family-gap analysis leads with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

KINDS = ("classical", "CR0", "CR1", "CR2")


class DesignError(ValueError):
    """The regression cannot be fitted (too few observations or clusters, collinear design)."""


@dataclass(frozen=True)
class OLSFit:
    """Coefficients, their covariance and the degrees of freedom of each coefficient's t test."""

    coef: np.ndarray
    vcov: np.ndarray
    df: np.ndarray
    kind: str
    n_obs: int
    n_clusters: int | None

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.vcov))

    def ci(self, j: int, level: float = 0.95) -> tuple[float, float]:
        """Two-sided t interval for coefficient j."""
        q = stats.t.ppf(0.5 + level / 2, self.df[j])
        return float(self.coef[j] - q * self.se[j]), float(self.coef[j] + q * self.se[j])

    def p_value(self, j: int) -> float:
        """Two-sided t-test p-value of coefficient j against zero."""
        return float(2 * stats.t.sf(abs(self.coef[j] / self.se[j]), self.df[j]))


def ols(y: npt.ArrayLike, X: npt.ArrayLike, groups: npt.ArrayLike | None = None, kind: str = "CR2") -> OLSFit:
    """Fit y = X b by least squares with a classical or cluster-robust covariance.

    `groups` labels each row's cluster (required unless kind == "classical"). Raises
    DesignError when the design is rank-deficient or there are too few observations or
    clusters to estimate a variance.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    n, k = X.shape
    if n <= k:
        raise DesignError(f"{n} observations cannot fit {k} coefficients with a variance left over")
    if np.linalg.matrix_rank(X) < k:
        raise DesignError("the design matrix is rank-deficient (a covariate is collinear with others)")
    bread = np.linalg.inv(X.T @ X)
    coef = bread @ X.T @ y
    resid = y - X @ coef
    if kind == "classical":
        sigma2 = resid @ resid / (n - k)
        return OLSFit(coef, sigma2 * bread, np.full(k, float(n - k)), kind, n, None)

    codes = _cluster_codes(groups, n)
    n_clusters = int(codes.max()) + 1
    if n_clusters < 2:
        raise DesignError("a cluster-robust variance needs at least 2 clusters")
    members = [np.flatnonzero(codes == g) for g in range(n_clusters)]
    adjust: list[np.ndarray | None]
    if kind == "CR2":
        adjust = [_inv_sqrt_psd(np.eye(len(idx)) - X[idx] @ bread @ X[idx].T) for idx in members]
    else:
        adjust = [None] * n_clusters
    scores = np.array([X[idx].T @ (resid[idx] if a is None else a @ resid[idx]) for idx, a in zip(members, adjust)])
    vcov = bread @ (scores.T @ scores) @ bread
    if kind == "CR1":
        vcov *= n_clusters / (n_clusters - 1) * (n - 1) / (n - k)
    if kind == "CR2":
        df = _bell_mccaffrey_df(X, bread, members, adjust)
    else:
        df = np.full(k, float(n_clusters - 1))
    return OLSFit(coef, vcov, df, kind, n, n_clusters)


def _cluster_codes(groups: npt.ArrayLike | None, n: int) -> np.ndarray:
    if groups is None:
        raise ValueError("a cluster-robust variance needs `groups`")
    labels = np.asarray(groups)
    if len(labels) != n:
        raise ValueError(f"`groups` has {len(labels)} labels for {n} observations")
    _, codes = np.unique(labels, return_inverse=True)
    return codes.ravel()


def _inv_sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root; eigenvalues near zero (a cluster fitted exactly, e.g. by
    its own fixed effect) get a generalised inverse, as in Pustejovsky & Tipton (2018)."""
    values, vectors = np.linalg.eigh(matrix)
    keep = values > 1e-10
    inv_sqrt = np.zeros_like(values)
    inv_sqrt[keep] = 1 / np.sqrt(values[keep])
    return np.asarray((vectors * inv_sqrt) @ vectors.T)


def _bell_mccaffrey_df(
    X: np.ndarray, bread: np.ndarray, members: list[np.ndarray], adjust: list[np.ndarray | None]
) -> np.ndarray:
    """Bell-McCaffrey degrees of freedom of every coefficient (Imbens & Kolesar 2016, eq. 9).

    For coefficient j, with G_g = (I - H)[:, g] A_g X_g (X'X)^-1 e_j stacked as the columns
    of an N x G matrix and a working model of independent homoskedastic errors, the df is
    (sum of the eigenvalues of G'G)^2 / (sum of their squares) = tr(G'G)^2 / tr((G'G)^2).
    """
    n = X.shape[0]
    annihilator = np.eye(n) - X @ bread @ X.T
    # stacked[:, j, g] is G_g for coefficient j
    stacked = np.stack([annihilator[:, idx] @ (a @ (X[idx] @ bread)) for idx, a in zip(members, adjust)], axis=2)
    gram = np.einsum("njg,njh->jgh", stacked, stacked)
    trace = np.einsum("jgg->j", gram)
    trace_sq = np.einsum("jgh,jhg->j", gram, gram)
    return np.asarray(trace**2 / trace_sq)
