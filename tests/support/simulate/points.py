"""Simulate transfer studies with baselines and gains planted in accuracy points.

The scenarios of bench/compare_simulations.py speak in points ("related languages 7 points higher at baseline", "a
12-point gap", "a slope of -0.5 points of gain per point of baseline"), so here the truth of
every model x language cell is set on that scale:

    true baseline  B[m, l] = model_baseline[m] + family_baseline_gap * related[l]
                             + lang[l] + cell[m, l]
    true gain      G[m, l] = gain + gain_slope * (B[m, l] - mean B) + family_gap * related[l]
                             + u[m] + v[l] + w[m, l]           (+ seed noise per seed)

with lang ~ N(0, language_sd), cell ~ N(0, cell_sd), u ~ N(0, model_gain_sd),
v ~ N(0, language_gain_sd), w ~ N(0, cell_gain_sd). True gains are independent of true
baselines unless `gain_slope` is set. Targets are kept inside [chance + 0.02, 0.98].

Items: questions differ in difficulty (a logit-scale effect shared by every language, model and
condition, as Belebele's parallel questions do); a cell's item probabilities are
chance + (1 - chance) * sigmoid(eta + difficulty) with eta solved so that their mean is the
cell's target exactly. Each run's answers are correlated within passages
(`passage_correlation`, a Gaussian copula: see `runs.passage_uniforms`), independently between
runs. Baseline (and CoT) runs are seedless as in the runner; fine-tuned runs are drawn per seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relxfer.compare.stats.data import COLUMNS
from tests.support.simulate.logit import CONTROL_NAMES, N_OPTIONS, RELATED_NAMES
from tests.support.simulate.runs import (
    Questions,
    SimRun,
    draw_answers,
    language_names,
    runs_to_items,
)

LOWEST_ABOVE_CHANCE, HIGHEST = 0.02, 0.98


def simulate_points_study(
    n_models: int = 2,
    n_related: int = 4,
    n_control: int = 4,
    n_questions: int = 100,
    questions_per_passage: int = 5,
    n_seeds: int = 1,
    model_baselines=None,  # mean true baseline of each model; default evenly 0.35 to 0.55
    family_baseline_gap: float = 0.0,  # related minus control true baseline (points as a proportion)
    language_sd: float = 0.03,  # language effect on the baseline
    cell_sd: float = 0.01,  # model x language deviations of the baseline
    gain: float = 0.15,  # mean true gain of `finetuned` over baseline
    family_gap: float = 0.0,  # extra true gain of related languages
    gain_slope: float = 0.0,  # change of the true gain per unit of true baseline
    model_gain_sd: float = 0.03,
    language_gain_sd: float = 0.05,  # languages are the replicates of the family contrast
    cell_gain_sd: float = 0.02,
    seed_sd: float = 0.01,
    cot_gain: float = 0.05,
    cot_parse_failure: float = 0.02,
    question_sd: float = 1.0,  # question difficulty (logit scale), shared by all runs
    passage_correlation: float = 0.3,  # within-passage correlation of each run's answers
    chance: float = 1 / N_OPTIONS,
    conditions=("baseline", "finetuned"),
    seed: int = 0,
) -> pd.DataFrame:
    """One simulated study's item frame (see the module docstring). Proportions throughout:
    0.12 is 12 points. Models are "sim-m1".."sim-mN"; related languages are named after the
    study's Semitic targets, controls after its non-Semitic ones."""
    unknown = set(conditions) - {"baseline", "finetuned", "cot"}
    if unknown:
        raise ValueError(f"cannot simulate condition(s) {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    model_baselines = (
        np.linspace(0.35, 0.55, n_models) if model_baselines is None else np.asarray(model_baselines, dtype=float)
    )
    if len(model_baselines) != n_models:
        raise ValueError(f"model_baselines has {len(model_baselines)} values for {n_models} models")
    n_languages = n_related + n_control
    related = np.r_[np.ones(n_related), np.zeros(n_control)]
    shape = (n_models, n_languages)
    base = (
        model_baselines[:, None]
        + family_baseline_gap * related[None, :]
        + rng.normal(0, language_sd, n_languages)[None, :]
        + rng.normal(0, cell_sd, shape)
    )
    base = np.clip(base, chance + LOWEST_ABOVE_CHANCE, HIGHEST)
    true_gain = (
        gain
        + gain_slope * (base - base.mean())
        + family_gap * related[None, :]
        + rng.normal(0, model_gain_sd, n_models)[:, None]
        + rng.normal(0, language_gain_sd, n_languages)[None, :]
        + rng.normal(0, cell_gain_sd, shape)
    )
    cot_true = cot_gain + rng.normal(0, cell_gain_sd, shape)

    questions = Questions.make(rng, n_questions, questions_per_passage, N_OPTIONS)
    difficulty = rng.normal(0, question_sd, n_questions)
    seed_noise = rng.normal(0, seed_sd, (*shape, n_seeds))
    targets = {
        "baseline": base[..., None],
        "cot": (base + cot_true)[..., None],
        "finetuned": (base + true_gain)[..., None] + seed_noise,
    }
    probabilities = {c: item_probabilities(targets[c], difficulty, chance) for c in conditions}
    names = language_names(n_related, n_control, RELATED_NAMES, CONTROL_NAMES)
    runs = []
    for m in range(n_models):
        for lang, name in enumerate(names):
            factors = dict(
                model=f"sim-m{m + 1}",
                language=name,
                group="Semitic" if related[lang] else "non-Semitic",
                role="related" if related[lang] else "control",
            )
            for condition in conditions:
                seeds = range(n_seeds) if condition == "finetuned" else [None]
                for s in seeds:
                    hits = draw_answers(
                        rng, probabilities[condition][m, lang, s or 0], questions.passage_of, passage_correlation
                    )
                    failed = rng.random(n_questions) < cot_parse_failure if condition == "cot" else None
                    runs.append(SimRun(condition=condition, seed=s, correct=hits, parse_failed=failed, **factors))
    items = runs_to_items(rng, runs, questions)
    return items[list(COLUMNS) + [c for c in items.columns if c not in COLUMNS]]


def item_probabilities(targets: np.ndarray, difficulty: np.ndarray, chance: float) -> np.ndarray:
    """Item probabilities of shape (*targets.shape, questions): chance + (1 - chance) *
    sigmoid(eta + difficulty), eta chosen per target (bisection) so that the mean over items
    equals the target, clipped to [chance + 0.02, 0.98]."""
    targets = np.clip(np.asarray(targets, dtype=float), chance + LOWEST_ABOVE_CHANCE, HIGHEST)[..., None]
    low, high = np.full(targets.shape, -30.0), np.full(targets.shape, 30.0)

    def probability(eta):
        return chance + (1 - chance) / (1 + np.exp(-(eta + difficulty)))

    for _ in range(60):
        middle = (low + high) / 2
        below = probability(middle).mean(axis=-1, keepdims=True) < targets
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return probability((low + high) / 2)
