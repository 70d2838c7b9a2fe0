"""Permutation tests over assignments of languages to the related group.

The related/control label belongs to a language, so under the null hypothesis that family does
not matter the languages are exchangeable between the groups: every assignment of the same
number of languages to "related" was as likely to produce the data. A statistic recomputed
under every assignment gives an exact p-value (Monte Carlo when there are too many)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

MAX_EXACT_ASSIGNMENTS = 200_000
DEFAULT_MONTE_CARLO = 20_000
TIE_TOLERANCE = 1e-9


def language_assignments(
    languages: Sequence[str], n_related: int, n_perm: int | None, seed: int
) -> tuple[list[tuple[str, ...]], bool]:
    """Sets of languages to label related: all C(G, n_related) of them, or a random sample.

    Returns (assignments as a list of tuples, exact flag). A sample does not contain the
    observed assignment; `indicator_matrix` adds it first (the +1 convention)."""
    total = math.comb(len(languages), n_related)
    limit = MAX_EXACT_ASSIGNMENTS if n_perm is None else n_perm
    if total <= limit:
        return list(itertools.combinations(languages, n_related)), True
    rng = np.random.default_rng(seed)
    draws = n_perm if n_perm is not None else DEFAULT_MONTE_CARLO
    return [tuple(rng.choice(languages, n_related, replace=False)) for _ in range(draws)], False


def indicator_matrix(
    cell_languages: Sequence[str], related_languages: Sequence[str], n_perm: int | None, seed: int
) -> tuple[np.ndarray, bool]:
    """(indicators, exact): a cells x assignments 0/1 matrix, one column per assignment of
    len(related_languages) languages to the related group (the observed one included)."""
    languages = sorted(set(cell_languages))
    observed = tuple(sorted(related_languages))
    assignments, exact = language_assignments(languages, len(observed), n_perm, seed)
    if not exact:
        assignments = [observed] + assignments
    index = {lang: i for i, lang in enumerate(languages)}
    chosen = np.zeros((len(assignments), len(languages)))
    for row, assignment in enumerate(assignments):
        chosen[row, [index[lang] for lang in assignment]] = 1.0
    return chosen[:, [index[lang] for lang in cell_languages]].T, exact


def fwl_coefficients(y: np.ndarray, Z: np.ndarray, indicators: np.ndarray) -> np.ndarray:
    """The coefficient of each candidate indicator column d in y ~ d + Z, all at once by
    Frisch-Waugh-Lovell: b = (M_Z d)'y / (M_Z d)'(M_Z d). NaN where d is collinear with Z.
    `y` may hold several outcomes as columns (n, k): the result is then (candidates, k)."""
    residual = indicators - Z @ np.linalg.lstsq(Z, indicators, rcond=None)[0]
    denominators = np.einsum("ij,ij->j", residual, residual).reshape((-1,) + (1,) * (np.ndim(y) - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominators > TIE_TOLERANCE, residual.T @ y / denominators, np.nan)


def permutation_p(betas: np.ndarray, observed: float) -> dict[str, float]:
    """Two-sided p (|b| >= |observed|), one-sided p (b >= observed), the resolution and the
    smallest two-sided p the assignments can produce, over the usable (finite) betas."""
    betas = betas[np.isfinite(betas)]
    tolerance = TIE_TOLERANCE * max(1.0, abs(observed))
    most_extreme = np.abs(betas).max()
    return {
        "perm_p_value": float(np.mean(np.abs(betas) >= abs(observed) - tolerance)),
        "perm_p_greater": float(np.mean(betas >= observed - tolerance)),
        "perm_resolution": 1 / len(betas),
        "perm_min_p": float(np.mean(np.abs(betas) >= most_extreme - tolerance)),
        "n_assignments": int(len(betas)),
    }
