"""Power of the family gap, through compare's own estimator and rule: gain ~ related + model
fixed effects over model x language cells, CR2 interval by language (`stats.cluster.ols`), the
exact permutation test over assignments of languages (`stats.permutation`), and the rule
(`stats.common.conclusion`): a finding needs the interval above 0 and the exact p < 0.05.

A planted gap moves every related cell's gain by the same amount, so on fixed draws the
estimate moves by exactly that amount, the residuals (hence the interval's width) stay, and
each assignment's coefficient moves by a known multiple of it: one simulated set of studies
gives the whole power curve. The draws are answered at a working gap near the answer (a
closed-form guess), so their binomial noise is that of accuracies near it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats

from relxfer.compare.power.assumptions import Assumptions
from relxfer.compare.power.curve import POWER, crossing
from relxfer.compare.power.floor import PermutationFloor, largest_p_below, permutation_floor
from relxfer.compare.power.simulate import Array, World
from relxfer.compare.stats.cluster import ols
from relxfer.compare.stats.common import conclusion
from relxfer.compare.stats.family_fits import design
from relxfer.compare.stats.permutation import TIE_TOLERANCE, fwl_coefficients, indicator_matrix

GRID = 161
WIDEST = 8.0  # the first pass's grid reaches this many median standard errors


@dataclass(frozen=True)
class GapPower:
    floor: PermutationFloor
    detectable: float | None  # gap (proportion) found with 80% power; None: never
    se: float  # median standard error of the gap over the simulated studies
    df: float  # Bell-McCaffrey degrees of freedom of the design
    gain_noise_var: float  # sampling variance of one cell's measured gain (seeds pooled)
    n_studies: int


@dataclass(frozen=True)
class _Fits:
    estimate: Array  # (studies,)
    se: Array
    q: float  # the interval's critical value
    df: float
    betas: Array  # (studies, assignments) coefficient under each assignment
    shift: Array  # (assignments,) how each assignment's coefficient moves with the gap


def cell_gains(world: World, gain: Array) -> tuple[Array, Array]:
    """(measured gains, measured reference accuracies), (studies, models * languages), cells in
    model-major order, seeds pooled as compare pools them."""
    reference, condition = world.counts(gain)
    n = world.design.items_per_language
    base = reference.sum(axis=-1) / n
    after = condition.sum(axis=-1).mean(axis=-1) / n
    S = base.shape[0]
    return (after - base).reshape(S, -1), base.reshape(S, -1)


def cells_frame(n_models: int, n_related: int, n_control: int) -> pd.DataFrame:
    """Model x language cells (model-major) with the columns compare's design needs."""
    languages = [f"r{i}" for i in range(n_related)] + [f"c{i}" for i in range(n_control)]
    rows = [(f"m{m}", lang, float(lang.startswith("r"))) for m in range(n_models) for lang in languages]
    return pd.DataFrame(rows, columns=["model", "language", "related"])


def gap_power(world: World) -> GapPower:
    """The gap detectable with 80% power (see the module docstring). The draws are answered at
    the closed-form guess (`closed_form_gap`), so their binomial noise is that of accuracies
    near the answer, and the power curve around it comes from compare's estimator."""
    d = world.design
    floor = permutation_floor(d.n_related, d.n_control)
    noise = gain_noise_variance(world)
    guess = closed_form_gap(d.n_related, d.n_control, d.n_models, world.assumptions, noise)
    if guess is None:  # the rule can never call a finding: nothing to simulate
        return GapPower(floor, None, float("nan"), float("nan"), noise, world.baseline.shape[0])
    fits = _fit(world, guess)
    effects = np.linspace(0.0, max(2 * guess, WIDEST * float(np.median(fits.se))), GRID)
    answer = crossing(effects, _power(fits, effects - guess))
    return GapPower(floor, answer, float(np.median(fits.se)), fits.df, noise, world.baseline.shape[0])


def gain_noise_variance(world: World) -> float:
    """Sampling variance of one cell's measured gain (seeds pooled) under no family gap."""
    true = world.true_gain()
    measured, _ = cell_gains(world, true)
    return float(np.mean((measured - true.reshape(measured.shape)) ** 2))


def closed_form_gap(n_related: int, n_control: int, n_models: int, a: Assumptions, noise_var: float) -> float | None:
    """A normal-theory approximation of the detectable gap: languages are the replicates, each
    with variance language_gain_sd^2 + (cell_gain_sd^2 + noise_var) / models; Welch degrees of
    freedom; the permutation test's effective level (its largest p below 0.05). None when the
    rule can never call a finding."""
    floor = permutation_floor(n_related, n_control)
    level = largest_p_below(floor)
    if not floor.finding_possible or level is None:
        return None
    per_language = a.language_gain_sd**2 + (a.cell_gain_sd**2 + noise_var) / n_models
    se = math.sqrt(per_language * (1 / n_related + 1 / n_control))
    df = welch_df(n_related, n_control)
    return float((stats.t.ppf(1 - level / 2, df) + stats.t.ppf(POWER, df)) * se)


def welch_df(n_related: int, n_control: int) -> float:
    """Welch-Satterthwaite degrees of freedom for two groups of equal variance: the
    Bell-McCaffrey df of the CR2 gap for a balanced design."""
    a, b = 1 / n_related, 1 / n_control
    return (a + b) ** 2 / (a**2 / (n_related - 1) + b**2 / (n_control - 1))


def _fit(world: World, gap: float) -> _Fits:
    d = world.design
    cells = cells_frame(d.n_models, d.n_related, d.n_control)
    X = design(cells)
    Z = np.delete(X, 1, axis=1)
    languages = cells["language"].to_numpy()
    related = sorted(cells.loc[cells["related"] == 1, "language"].unique())
    indicators, _ = indicator_matrix(cells["language"].tolist(), related, None, 0)
    shift = fwl_coefficients(X[:, 1], Z, indicators)
    gains, _ = cell_gains(world, world.true_gain(gap=gap))
    betas = fwl_coefficients(gains.T, Z, indicators).T  # (studies, assignments)
    fits = [ols(y, X, languages, "CR2") for y in gains]
    low, _ = fits[0].ci(1)
    q = float((fits[0].coef[1] - low) / fits[0].se[1])
    estimates = np.array([fit.coef[1] for fit in fits])
    ses = np.array([fit.se[1] for fit in fits])
    return _Fits(estimates, ses, q, float(fits[0].df[1]), betas, shift)


def _power(fits: _Fits, moves: NDArray[np.float64]) -> Array:
    """Share of studies the rule calls a finding "above" when the gap moves by each of `moves`."""
    found = np.zeros(len(moves))
    for estimate, se, betas in zip(fits.estimate, fits.se, fits.betas):
        b = estimate + moves  # (moves,)
        moved = betas[None, :] + moves[:, None] * fits.shift[None, :]  # (moves, assignments)
        tolerance = TIE_TOLERANCE * np.maximum(1.0, np.abs(b))
        usable = np.isfinite(betas)  # as `permutation_p`: collinear assignments do not count
        p = np.mean(np.abs(moved[:, usable]) >= (np.abs(b) - tolerance)[:, None], axis=1)
        for j in range(len(moves)):
            found[j] += conclusion(b[j] - fits.q * se, b[j] + fits.q * se, float(p[j])) == "above"
    result: Array = found / len(fits.estimate)
    return result
