"""Simulated studies for power computations: what compare's estimators would see, drawn from the
stated variance components (`assumptions.Assumptions`), many studies at once.

The model is the one the bench validates through compare itself (tests/support/simulate,
`simulate_points_study`), in accuracy points:

    true baseline  B[m, l] = model_baseline[m] + lang[l]           (clipped to [chance + 0.02, 0.98])
    true gain      G[m, l] = gain + slope * (B[m, l] - mean B) + gap * related[l]
                             + u[m] + v[l] + w[m, l]                (+ seed noise per seed)

with model baselines evenly spread over `baseline_spread` around `baseline`, lang ~ N(0,
language_sd), u, v, w ~ N(0, model_gain_sd / language_gain_sd / cell_gain_sd). Items: question
difficulties (logit scale, shared by every run of a study) and a per-cell shift chosen so the
mean item probability is the cell's target; each run's answers are correlated within passages
through a Gaussian copula (`passage_correlation`), independently between runs.

A `World` holds everything random except the answers' targets, so the same draws can be
answered at different effects (common random numbers: a power curve is then smooth in the
effect)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

from relxfer.compare.power.assumptions import CHANCE, Assumptions
from relxfer.compare.power.design import StudyDesign

Array = NDArray[np.float64]
LOWEST_ABOVE_CHANCE, HIGHEST = 0.02, 0.98
ETA_GRID = np.linspace(-12.0, 12.0, 241)  # shifts searched for a cell's mean item probability


@dataclass(frozen=True)
class World:
    """Random draws of `n_studies` studies of one design (axes: study, model, language, ...)."""

    design: StudyDesign
    assumptions: Assumptions
    related: Array  # (languages,) 1.0 for related languages
    baseline: Array  # (studies, models, languages) true baseline accuracy
    gain_noise: Array  # (studies, models, languages) u + v + w
    seed_noise: Array  # (studies, models, languages, seeds)
    difficulty: Array  # (studies, items)
    mean_probability: Array  # (studies, len(ETA_GRID)): mean item probability at each shift
    uniforms_reference: Array  # (studies, models, languages, items)
    uniforms_condition: Array  # (studies, models, languages, seeds, items)

    @property
    def passage_of(self) -> NDArray[np.int64]:
        return np.arange(self.design.items_per_language) // self.design.questions_per_passage

    def true_gain(self, gap: float = 0.0, slope: float = 0.0) -> Array:
        """(studies, models, languages) true gains with a planted family gap and slope."""
        centred = self.baseline - self.baseline.mean(axis=(1, 2), keepdims=True)
        gains: Array = self.assumptions.gain + slope * centred + gap * self.related + self.gain_noise
        return gains

    def counts(self, gain: Array) -> tuple[Array, Array]:
        """Right answers per passage: (reference (studies, models, languages, passages),
        condition (studies, models, languages, seeds, passages)) when the true gains are `gain`."""
        condition_target = (self.baseline + gain)[..., None] + self.seed_noise
        reference = self.uniforms_reference < self._item_probabilities(self.baseline)
        condition = self.uniforms_condition < self._item_probabilities(condition_target)
        return _per_passage(reference, self.passage_of), _per_passage(condition, self.passage_of)

    def _item_probabilities(self, targets: Array) -> Array:
        """Item probabilities (targets' shape + items) whose mean over the items is the target."""
        targets = np.clip(targets, CHANCE + LOWEST_ABOVE_CHANCE, HIGHEST)
        shifts = np.empty_like(targets)
        for s in range(targets.shape[0]):
            shifts[s] = np.interp(targets[s], self.mean_probability[s], ETA_GRID)
        S, n = self.difficulty.shape
        difficulty = self.difficulty.reshape((S,) + (1,) * (targets.ndim - 1) + (n,))
        probabilities: Array = CHANCE + (1 - CHANCE) * special.expit(shifts[..., None] + difficulty)
        return probabilities


def draw_world(
    design: StudyDesign, assumptions: Assumptions, n_studies: int, rng: np.random.Generator, gain_sds: bool = True
) -> World:
    """`n_studies` studies' draws. `gain_sds=False` sets the random effects of the gains to zero
    (every cell's true gain is then exactly the planted one)."""
    a, d = assumptions, design
    M, L, S, n = d.n_models, d.n_languages, n_studies, d.items_per_language
    related = np.r_[np.ones(d.n_related), np.zeros(d.n_control)]
    models = (
        a.baseline + np.linspace(-a.baseline_spread / 2, a.baseline_spread / 2, M) if M > 1 else np.full(1, a.baseline)
    )
    baseline = models[None, :, None] + rng.normal(0, a.language_sd, (S, 1, L))
    baseline = np.clip(baseline, CHANCE + LOWEST_ABOVE_CHANCE, HIGHEST)
    scale = 1.0 if gain_sds else 0.0
    gain_noise = scale * (
        rng.normal(0, a.model_gain_sd, (S, M, 1))
        + rng.normal(0, a.language_gain_sd, (S, 1, L))
        + rng.normal(0, a.cell_gain_sd, (S, M, L))
    )
    seed_noise = scale * rng.normal(0, a.seed_sd, (S, M, L, d.n_seeds))
    difficulty = rng.normal(0, a.question_sd, (S, n))
    mean_probability = CHANCE + (1 - CHANCE) * special.expit(ETA_GRID[None, :, None] + difficulty[:, None, :]).mean(
        axis=2
    )
    passage_of = np.arange(n) // d.questions_per_passage
    return World(
        design=d,
        assumptions=a,
        related=related,
        baseline=baseline,
        gain_noise=gain_noise,
        seed_noise=seed_noise,
        difficulty=difficulty,
        mean_probability=mean_probability,
        uniforms_reference=_passage_uniforms(rng, (S, M, L, n), passage_of, a.passage_correlation),
        uniforms_condition=_passage_uniforms(rng, (S, M, L, d.n_seeds, n), passage_of, a.passage_correlation),
    )


def _passage_uniforms(
    rng: np.random.Generator, shape: tuple[int, ...], passage_of: NDArray[np.int64], rho: float
) -> Array:
    """Uniforms correlated within passages (latent correlation `rho`), marginally uniform."""
    shared = rng.normal(size=(*shape[:-1], int(passage_of.max()) + 1))[..., passage_of]
    uniforms: Array = special.ndtr(np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=shape))
    return uniforms


def _per_passage(correct: NDArray[np.bool_], passage_of: NDArray[np.int64]) -> Array:
    """Sum the last (item) axis within passages."""
    one_hot = (passage_of[:, None] == np.arange(int(passage_of.max()) + 1)[None, :]).astype(float)
    result: Array = correct.astype(float) @ one_hot
    return result
