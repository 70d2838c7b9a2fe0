"""Power of the baseline-gain slope, through compare's own estimator and rule: the slope of gain
on baseline across model x language cells corrected for the baselines' measurement error
(`stats.corrected_slope`, with the noise moments of `stats.measurement.passage_moments`),
delete-one-model jackknife (delete-one-language below 3 models), reported only when the
baselines' reliability reaches `stats.baseline.MIN_RELIABILITY`; a finding when its 95%
interval excludes 0.

The slope is planted negative (gains falling as baselines rise, the study's pattern). A planted
slope adds slope * (true baseline - its mean) to every cell's gain; the corrected estimate and
each jackknife replicate are linear in the gains, so on fixed draws the estimate moves linearly
with the slope and the squared standard error quadratically: three evaluations of the
estimator per study give its whole power curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from relxfer.compare.power.curve import crossing
from relxfer.compare.power.simulate import Array, World
from relxfer.compare.stats.baseline import MIN_MODEL_CLUSTERS, MIN_RELIABILITY
from relxfer.compare.stats.corrected_slope import corrected_slope
from relxfer.compare.stats.measurement import passage_moments, reliability

GRID = 161
STEEPEST = 3.0  # points of gain per point of baseline: the grid's end


@dataclass(frozen=True)
class SlopePower:
    detectable: float | None  # |slope| found with 80% power (the slope planted negative); None: never
    reliable_share: float  # share of simulated studies whose baselines were reliable enough to correct
    clusters: str  # what the jackknife leaves out
    n_studies: int


@dataclass(frozen=True)
class _Fits:
    slope: Array  # (studies,) at the working slope
    move: Array  # (studies,) change of the estimate per unit of planted slope
    se2: Array  # (studies, 3): squared se's coefficients a + b * move + c * move^2
    q: float
    reliable: NDArray[np.bool_]  # (studies,)


def slope_power(world: World) -> SlopePower:
    """The (negative) slope detectable with 80% power. The draws are answered first with no
    slope, where compare's own `detectable` slope gives a guess, then at that guess."""
    d = world.design
    reference, condition = world.counts(world.true_gain())
    _, v, w, _, _, labels = _cells(world, reference, condition)
    b, g = _bg(world, reference, condition)
    guesses = [corrected_slope(b[s], g[s], v[s], w[s], labels).detectable for s in range(len(b))]
    finite = [x for x in guesses if np.isfinite(x)]
    working = float(np.median(finite)) if finite else 1.0
    fits = _fit(world, working)
    effects = np.linspace(0.0, max(2 * working, STEEPEST), GRID)
    answer = crossing(effects, _power(fits, effects - working))
    clusters = "model" if d.n_models >= MIN_MODEL_CLUSTERS else "language"
    return SlopePower(answer, float(np.mean(fits.reliable)), clusters, len(fits.slope))


def _fit(world: World, steepness: float) -> _Fits:
    reference, condition = world.counts(world.true_gain(slope=-steepness))
    b, g = _bg(world, reference, condition)
    S, v, w, h, _, labels = _cells(world, reference, condition)
    slope, move, se2, reliable = [], [], [], []
    q = float("nan")
    for s in range(S):
        at = [corrected_slope(b[s], g[s] + k * h[s], v[s], w[s], labels) for k in (0.0, 1.0, -1.0)]
        q = float(stats.t.ppf(0.975, at[0].df))
        squared = [fit.se**2 for fit in at]
        slope.append(at[0].slope)
        move.append(at[1].slope - at[0].slope)
        se2.append((squared[0], (squared[1] - squared[2]) / 2, (squared[1] + squared[2]) / 2 - squared[0]))
        reliable.append(reliability(b[s], v[s]) >= MIN_RELIABILITY)
    return _Fits(np.array(slope), np.array(move), np.array(se2), q, np.array(reliable))


def _bg(world: World, reference: Array, condition: Array) -> tuple[Array, Array]:
    """Measured baselines and gains per cell, (studies, cells), seeds pooled as compare pools them."""
    d = world.design
    S = reference.shape[0]
    b = (reference.sum(axis=-1) / d.items_per_language).reshape(S, -1)
    after = condition.sum(axis=(-2, -1)) / (d.items_per_language * d.n_seeds)
    return b, after.reshape(S, -1) - b


def _cells(
    world: World, reference: Array, condition: Array
) -> tuple[int, Array, Array, Array, NDArray[np.int64], NDArray[np.int64]]:
    """(studies, v, w, h, model of each cell, jackknife labels): the baselines' noise moments,
    and how each cell's gain moves per unit of (negative) slope."""
    d = world.design
    S = reference.shape[0]
    items = np.bincount(world.passage_of).astype(float)  # questions in each passage
    n_p = np.broadcast_to(items * d.n_seeds, reference.shape)
    s0 = reference * d.n_seeds  # the seedless reference pairs with every seed
    s1 = condition.sum(axis=-2)
    v, w = (np.asarray(m, dtype=float).reshape(S, -1) for m in passage_moments(n_p, s0, s1))
    centred = world.baseline - world.baseline.mean(axis=(1, 2), keepdims=True)
    model_of = np.repeat(np.arange(d.n_models), d.n_languages)
    language_of = np.tile(np.arange(d.n_languages), d.n_models)
    labels = model_of if d.n_models >= MIN_MODEL_CLUSTERS else language_of
    h: Array = -centred.reshape(S, -1)
    return S, v, w, h, model_of, labels


def _power(fits: _Fits, moves: Array) -> Array:
    """Share of studies whose corrected interval lies below 0 when the slope steepens by `moves`."""
    slope = fits.slope[:, None] + moves[None, :] * fits.move[:, None]
    a, b, c = (fits.se2[:, i, None] for i in range(3))
    se = np.sqrt(np.maximum(a + b * moves[None, :] + c * moves[None, :] ** 2, 0.0))
    found = (slope + fits.q * se < 0) & fits.reliable[:, None] & np.isfinite(slope)
    result: Array = found.mean(axis=0)
    return result
