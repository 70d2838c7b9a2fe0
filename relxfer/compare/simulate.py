"""Simulate item-level transfer studies with planted effects, for tests and benchmarks.

The generative model (all effects on the logit scale of a latent "knows the answer" probability;
a 4-option multiple-choice item is answered correctly with probability
chance + (1 - chance) * sigmoid(eta), so accuracy floors at chance as on Belebele):

    baseline     eta = ability[m] + lang[l] + question[q] + passage[p]
    finetuned    eta + gain[m, l, s]
    cot          eta + cot_gain[m, l, s]

    gain[m, l, s] = finetune_gain + gain_ability_slope * (ability[m] - mean ability)
                    + u[m] + v[l] + family_gap * related[l] + w[m, l] + seed noise
    cot_gain      = cot_gain + cot_alignment * u[m] + u_cot[m] + w_cot[m, l] + seed noise

with u ~ N(0, model_gain_sd), v ~ N(0, language_gain_sd), w ~ N(0, cell_gain_sd),
lang ~ N(0, language_sd), question ~ N(0, question_sd), passage ~ N(0, passage_sd).

`baseline_noise` (0 to 1) is measurement noise of the baseline run that the fine-tuned run
does not share, the stuff regression to the mean is made of: the baseline's answers to the
questions of one passage are correlated through a Gaussian copula with correlation
baseline_noise (a latent z = sqrt(rho) Z_passage + sqrt(1 - rho) e_question per model x
language x passage; answer right when Phi(z) < p). Each item keeps its probability, so expected
accuracies and true gains are untouched, but a cell's measured baseline gets noisier. (Noise
added to the logit would not do: it compresses the expected accuracy and plants a real
baseline-gain slope.) Questions are parallel across languages (the same question_id,
passage_id, gold and difficulty in every language), as in Belebele. The baseline is scored
once per model and language and repeated for every seed (log-prob scoring is deterministic);
fine-tuned and CoT runs are drawn per seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

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
    baseline_noise: float = 0.0,  # within-passage correlation of baseline answers (0 to 1)
    cot_gain: float = 0.5,
    cot_alignment: float = 1.0,  # weight of the model's fine-tuning deviation u[m] in its CoT gain
    cot_model_sd: float = 0.2,  # CoT-specific model deviation
    cot_parse_failure: float = 0.02,  # share of CoT answers that cannot be parsed (scored wrong)
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
    abilities = (np.linspace(-2.0, 3.0, n_models) if model_abilities is None
                 else np.asarray(model_abilities, dtype=float))
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

    # Gains, shape (model, language, seed).
    u = rng.normal(0, model_gain_sd, n_models)
    ft_gain = (
        finetune_gain + gain_ability_slope * (abilities - abilities.mean())[:, None] + u[:, None]
        + rng.normal(0, language_gain_sd, n_languages)[None, :] + family_gap * related[None, :]
        + rng.normal(0, cell_gain_sd, (n_models, n_languages))
    )[:, :, None] + rng.normal(0, seed_sd, (n_models, n_languages, n_seeds))
    cot = (
        cot_gain + cot_alignment * u[:, None] + rng.normal(0, cot_model_sd, n_models)[:, None]
        + rng.normal(0, cell_gain_sd, (n_models, n_languages))
    )[:, :, None] + rng.normal(0, seed_sd, (n_models, n_languages, n_seeds))

    gold = rng.integers(0, N_OPTIONS, n_questions)
    correct = {}
    if "baseline" in conditions:
        once = _answer(rng, eta, chance, _passage_copula(rng, eta.shape, passage_of, baseline_noise))
        correct["baseline"] = np.repeat(once[:, :, None, :], n_seeds, axis=2)
    if "finetuned" in conditions:
        correct["finetuned"] = _answer(rng, eta[:, :, None, :] + ft_gain[..., None], chance)
    if "cot" in conditions:
        correct["cot"] = _answer(rng, eta[:, :, None, :] + cot[..., None], chance)
    unknown = set(conditions) - set(correct)
    if unknown:
        raise ValueError(f"cannot simulate condition(s) {sorted(unknown)}")

    names = _language_names(n_related, n_control)
    frames = [
        _to_frame(rng, condition, hits, gold, passage_of, names, related, n_models,
                  cot_parse_failure if condition == "cot" else 0.0)
        for condition, hits in correct.items()
    ]
    return pd.concat(frames, ignore_index=True)


def _answer(rng, eta, chance, uniforms=None) -> np.ndarray:
    """1 where a uniform draw falls below the probability of a right answer."""
    p = chance + (1 - chance) / (1 + np.exp(-eta))
    u = rng.random(eta.shape) if uniforms is None else uniforms
    return (u < p).astype(np.int64)


def _passage_copula(rng, shape, passage_of, rho: float) -> np.ndarray:
    """Uniforms over (model, language, question), correlated within passages (Gaussian copula
    with correlation rho): marginally uniform, so each answer keeps its probability."""
    if not 0 <= rho <= 1:
        raise ValueError(f"baseline_noise is a correlation in [0, 1], not {rho}")
    shared = rng.normal(size=(*shape[:2], passage_of.max() + 1))[:, :, passage_of]
    z = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=shape)
    return special.ndtr(z)


def _language_names(n_related: int, n_control: int) -> list[str]:
    related = [RELATED_NAMES[i] if i < len(RELATED_NAMES) else f"rel{i + 1}" for i in range(n_related)]
    control = [CONTROL_NAMES[i] if i < len(CONTROL_NAMES) else f"ctl{i + 1}" for i in range(n_control)]
    return related + control


def _to_frame(rng, condition, hits, gold, passage_of, names, related, n_models, parse_failure):
    """Flatten hits of shape (model, language, seed, question) into item rows."""
    n_mod, n_lang, n_seed, n_q = hits.shape
    hits = hits.reshape(-1).copy()
    shape = (n_mod, n_lang, n_seed, n_q)
    m, lang, s, q = (idx.reshape(-1) for idx in np.indices(shape))
    failed = rng.random(hits.size) < parse_failure
    hits[failed] = 0
    wrong_offset = rng.integers(1, N_OPTIONS, hits.size)  # a uniformly chosen wrong option
    predicted = np.where(hits == 1, gold[q], (gold[q] + wrong_offset) % N_OPTIONS)
    predicted[failed] = -1
    is_related = related[lang] == 1
    return pd.DataFrame({
        "model": np.array([f"sim-m{i + 1}" for i in range(n_models)])[m],
        "seed": s,
        "condition": condition,
        "language": np.array(names)[lang],
        "group": np.where(is_related, "Semitic", "non-Semitic"),
        "role": np.where(is_related, "related", "control"),
        "question_id": np.char.add("q", np.char.zfill(q.astype(str), 3)),
        "passage_id": np.char.add("p", np.char.zfill(passage_of[q].astype(str), 3)),
        "gold": gold[q],
        "predicted": predicted,
        "correct": hits,
    })
