"""Simulate transfer studies with effects planted on the logit scale.

The generative model (all effects on the logit scale of a latent "knows the answer" probability;
a 4-option multiple-choice item is answered correctly with probability
chance + (1 - chance) * sigmoid(eta), so accuracy floors at chance as on Belebele):

    baseline     eta = ability[m] + lang[l] + question[q] + passage[p]
    finetuned    eta + gain[m, l, s]
    cot          eta + cot_gain[m, l]

    gain[m, l, s] = finetune_gain + gain_ability_slope * (ability[m] - mean ability)
                    + u[m] + v[l] + family_gap * related[l] + w[m, l] + seed noise
    cot_gain      = cot_gain + cot_alignment * u[m] + u_cot[m] + w_cot[m, l]

with u ~ N(0, model_gain_sd), v ~ N(0, language_gain_sd), w ~ N(0, cell_gain_sd),
lang ~ N(0, language_sd), question ~ N(0, question_sd), passage ~ N(0, passage_sd).

`passage_correlation` (0 to 1) makes every run's answers to the questions of one passage move
together (a Gaussian copula, `runs.passage_uniforms`): a model that misreads a passage misses
several of its questions in that run, independently of other runs. `baseline_noise` raises that
correlation for the baseline run alone: measurement noise the fine-tuned run does not share, the
stuff regression to the mean is made of. Each item keeps its probability, so expected accuracies
and true gains are untouched. (Noise added to the logit would not do: it compresses the expected
accuracy and plants a real baseline-gain slope.) Questions are parallel across languages (the
same question_id, passage_id, gold and difficulty in every language), as in Belebele. As the
runner does, baseline and CoT are scored once per model and language (seedless) and fine-tuned
runs once per seed; the runs go through `runs.runs_to_items`, i.e. the runner's record format.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relxfer.compare.stats.data import COLUMNS
from tests.support.simulate.runs import (
    Questions,
    SimRun,
    draw_answers,
    language_names,
    runs_to_items,
)

RELATED_NAMES = ("heb_Hebr", "amh_Ethi", "mlt_Latn", "tir_Ethi")
CONTROL_NAMES = ("jpn_Jpan", "kor_Hang", "fra_Latn", "tur_Latn", "zho_Hans", "hin_Deva")
N_OPTIONS = 4


def simulate_study(
    n_models: int = 7,
    n_related: int = 3,
    n_control: int = 3,
    n_questions: int = 100,
    questions_per_passage: int = 2,  # Belebele averages ~1.8 questions per passage
    n_seeds: int = 1,
    family_gap: float = 0.0,  # extra fine-tuning gain of related languages (logit)
    finetune_gain: float = 1.0,  # mean fine-tuning gain (logit)
    gain_ability_slope: float = 0.0,  # true change of the gain per unit of model ability
    model_abilities=None,  # default: evenly spread from weak (-2) to strong (+3)
    model_gain_sd: float = 0.3,  # model-specific task-format deficit, shared with CoT
    language_sd: float = 0.5,  # language effect on baseline
    language_gain_sd: float = 0.3,  # language effect on the gain: languages are the replicates
    cell_gain_sd: float = 0.1,  # model x language deviations of the gain
    question_sd: float = 1.0,
    passage_sd: float = 0.5,
    passage_correlation: float = 0.0,  # within-passage correlation of every run's answers (0 to 1)
    baseline_noise: float = 0.0,  # the baseline run's within-passage correlation, if higher (0 to 1)
    cot_gain: float = 0.5,
    cot_alignment: float = 1.0,  # weight of the model's fine-tuning deviation u[m] in its CoT gain
    cot_model_sd: float = 0.2,  # CoT-specific model deviation
    cot_parse_failure: float = 0.02,  # share of CoT reasoning texts that commit to no answer
    seed_sd: float = 0.1,  # run-to-run variation of the gains across seeds
    chance: float = 1 / N_OPTIONS,
    conditions=("baseline", "finetuned", "cot"),
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate one study and return its items in the `relxfer.compare` input format.

    See the module docstring for the model. Related languages are named after the study's
    Semitic targets (heb_Hebr, amh_Ethi, mlt_Latn, ...; group "Semitic"), controls after its
    non-Semitic ones (jpn_Jpan, kor_Hang, fra_Latn, ...; group "non-Semitic"); extra languages
    are numbered. Models are "sim-m1" (weakest) to "sim-mN" (strongest).
    """
    rng = np.random.default_rng(seed)
    abilities = (
        np.linspace(-2.0, 3.0, n_models) if model_abilities is None else np.asarray(model_abilities, dtype=float)
    )
    if len(abilities) != n_models:
        raise ValueError(f"model_abilities has {len(abilities)} values for {n_models} models")
    n_languages = n_related + n_control
    n_passages = -(-n_questions // questions_per_passage)
    related = np.r_[np.ones(n_related), np.zeros(n_control)]
    passage_of = np.arange(n_questions) // questions_per_passage

    # Latent baseline logits, shape (model, language, question).
    question = rng.normal(0, question_sd, n_questions) + rng.normal(0, passage_sd, n_passages)[passage_of]
    language = rng.normal(0, language_sd, n_languages)
    eta = abilities[:, None, None] + language[None, :, None] + question[None, None, :]
    if not 0 <= baseline_noise <= 1:
        raise ValueError(f"baseline_noise is a correlation in [0, 1], not {baseline_noise}")

    # Gains, shape (model, language, seed).
    u = rng.normal(0, model_gain_sd, n_models)
    ft_gain = (
        finetune_gain
        + gain_ability_slope * (abilities - abilities.mean())[:, None]
        + u[:, None]
        + rng.normal(0, language_gain_sd, n_languages)[None, :]
        + family_gap * related[None, :]
        + rng.normal(0, cell_gain_sd, (n_models, n_languages))
    )[:, :, None] + rng.normal(0, seed_sd, (n_models, n_languages, n_seeds))
    cot = (
        cot_gain
        + cot_alignment * u[:, None]
        + rng.normal(0, cot_model_sd, n_models)[:, None]
        + rng.normal(0, cell_gain_sd, (n_models, n_languages))
    )[:, :, None]

    names = language_names(n_related, n_control, RELATED_NAMES, CONTROL_NAMES)
    questions = Questions.make(rng, n_questions, questions_per_passage, N_OPTIONS)
    baseline_rho = max(passage_correlation, baseline_noise)
    unknown = set(conditions) - {"baseline", "finetuned", "cot"}
    if unknown:
        raise ValueError(f"cannot simulate condition(s) {sorted(unknown)}")
    runs = []
    for m in range(n_models):
        for lang, name in enumerate(names):
            factors = dict(
                model=f"sim-m{m + 1}",
                language=name,
                group="Semitic" if related[lang] else "non-Semitic",
                role="related" if related[lang] else "control",
            )
            if "baseline" in conditions:
                hits = draw_answers(rng, _p(eta[m, lang], chance), passage_of, baseline_rho)
                runs.append(SimRun(condition="baseline", seed=None, correct=hits, **factors))
            if "cot" in conditions:
                hits = draw_answers(rng, _p(eta[m, lang] + cot[m, lang, 0], chance), passage_of, passage_correlation)
                runs.append(
                    SimRun(
                        condition="cot",
                        seed=None,
                        correct=hits,
                        parse_failed=rng.random(n_questions) < cot_parse_failure,
                        **factors,
                    )
                )
            if "finetuned" in conditions:
                for s in range(n_seeds):
                    hits = draw_answers(
                        rng, _p(eta[m, lang] + ft_gain[m, lang, s], chance), passage_of, passage_correlation
                    )
                    runs.append(SimRun(condition="finetuned", seed=s, correct=hits, **factors))
    items = runs_to_items(rng, runs, questions)
    return items[list(COLUMNS) + [c for c in items.columns if c not in COLUMNS]]


def _p(eta, chance):
    """Probability of a right answer: chance + (1 - chance) * sigmoid(eta)."""
    return chance + (1 - chance) / (1 + np.exp(-eta))
