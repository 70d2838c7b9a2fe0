"""The estimators of the family gap (see `family.py` for which one leads and why).

Each takes model x language cells (seeds pooled) with columns model, language, related (0/1) and
returns a `GapFit`: the related coefficient, its language-clustered interval, and the same
coefficient under every assignment of languages to the related group (for the exact
permutation test).

- `fit_ols(covariate=None)`: gain ~ related + model fixed effects, CR2 by language with
  Bell-McCaffrey df. With the measured baseline as covariate it is the measured-baseline
  adjustment that `family.py` explains the bias of (kept for the simulations that measure it).
- `fit_cross_fitted`: the baseline covariate measured on one half of each language's passages,
  the gain on the other half, both ways, over random splits, stacked into one regression
  (clustered by language, so the copies of a cell count once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from relxfer.compare.stats.cluster import ols
from relxfer.compare.stats.data import Counts, on_scale
from relxfer.compare.stats.permutation import fwl_coefficients, indicator_matrix


@dataclass
class GapFit:
    estimate: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p_value: float
    betas: np.ndarray  # the coefficient under each assignment (observed one included)
    exact: bool


def design(cells: pd.DataFrame, covariate: npt.ArrayLike | None = None) -> np.ndarray:
    """Columns: intercept, related, [covariate], model dummies (first model dropped)."""
    columns = [np.ones(len(cells)), cells["related"].to_numpy(float)]
    if covariate is not None:
        columns.append(np.asarray(covariate, dtype=float))
    models = sorted(cells["model"].unique())
    columns += [(cells["model"] == m).to_numpy(float) for m in models[1:]]
    return np.column_stack(columns)


def fit_ols(
    cells: pd.DataFrame,
    y: npt.ArrayLike,
    covariate: npt.ArrayLike | None = None,
    level: float = 0.95,
    n_perm: int | None = None,
    seed: int = 0,
) -> GapFit:
    """Related coefficient of y ~ related [+ covariate] + model fixed effects; CR2 by language."""
    X = design(cells, covariate)
    gains = np.asarray(y, dtype=float)
    fit = ols(gains, X, cells["language"].to_numpy(), "CR2")
    indicators, exact = indicator_matrix(cells["language"].tolist(), _related(cells), n_perm, seed)
    betas = fwl_coefficients(gains, np.delete(X, 1, axis=1), indicators)
    low, high = fit.ci(1, level)
    return GapFit(float(fit.coef[1]), float(fit.se[1]), float(fit.df[1]), low, high, fit.p_value(1), betas, exact)


def fit_cross_fitted(
    cells: pd.DataFrame,
    half_a: Counts,
    half_b: Counts,
    reference: str,
    condition: str,
    scale: str,
    level: float = 0.95,
    n_perm: int | None = None,
    seed: int = 0,
) -> GapFit:
    """gain(half B) ~ related + baseline(half A) + model, and the same with the halves swapped,
    for every split in `half_a`/`half_b` (`data.split_half_counts`), as one stacked regression
    with CR2 by language: the baseline's noise is never the gain's, so no regression to the
    mean enters the related coefficient."""
    copies = []
    for first, second in ((half_a, half_b), (half_b, half_a)):
        baseline = on_scale(first[reference], first["n"], scale)
        gain = on_scale(second[condition], second["n"], scale) - on_scale(second[reference], second["n"], scale)
        copies += [(baseline[:, s], gain[:, s]) for s in range(baseline.shape[1])]
    stacked = pd.concat([cells] * len(copies), ignore_index=True)
    x = np.concatenate([c[0] for c in copies])
    y = np.concatenate([c[1] for c in copies])
    return fit_ols(stacked, y, covariate=x, level=level, n_perm=n_perm, seed=seed)


def _related(cells: pd.DataFrame) -> list[str]:
    return sorted(cells.loc[cells["related"] == 1, "language"].unique())


def fit_corrected(
    cells: pd.DataFrame,
    y: npt.ArrayLike,
    baseline: npt.ArrayLike,
    v: np.ndarray,
    w: np.ndarray,
    level: float = 0.95,
    n_perm: int | None = None,
    seed: int = 0,
) -> GapFit:
    """gain ~ related + baseline + model with the baseline's measurement error removed from the
    normal equations (Fuller 1987, ch. 2): (X'X - S) b = X'y - s, S = sum(v) at the baseline's
    diagonal, s = sum(w - v) at its entry (`measurement.error_moments`: v the baseline's noise
    variance, w - v its covariance with the gain's noise). Interval: delete-one-language
    jackknife with t(G-1)."""
    from scipy import stats

    X = design(cells, baseline)
    gains = np.asarray(y, dtype=float)
    languages = cells["language"].to_numpy()
    beta = _corrected(X, gains, v, w)
    groups = sorted(set(languages))
    leave_out = np.array(
        [_corrected(X[languages != g], gains[languages != g], v[languages != g], w[languages != g]) for g in groups]
    )
    G = len(groups)
    se = float(np.sqrt((G - 1) / G * np.sum((leave_out[:, 1] - leave_out[:, 1].mean()) ** 2)))
    q = stats.t.ppf(0.5 + level / 2, G - 1)
    indicators, exact = indicator_matrix(cells["language"].tolist(), _related(cells), n_perm, seed)
    betas = np.array([_corrected(np.column_stack([X[:, :1], d, X[:, 2:]]), gains, v, w)[1] for d in indicators.T])
    p = float(2 * stats.t.sf(abs(beta[1] / se), G - 1)) if se > 0 else float("nan")
    return GapFit(float(beta[1]), se, float(G - 1), float(beta[1] - q * se), float(beta[1] + q * se), p, betas, exact)


def _corrected(X: np.ndarray, y: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    S = np.zeros((X.shape[1], X.shape[1]))
    S[2, 2] = np.sum(v)
    s = np.zeros(X.shape[1])
    s[2] = np.sum(w - v)
    try:
        return np.asarray(np.linalg.solve(X.T @ X - S, X.T @ y - s))
    except np.linalg.LinAlgError:
        return np.full(X.shape[1], np.nan)
