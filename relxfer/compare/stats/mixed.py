"""Item-level logistic mixed model of the family contrast, as a description, not a test.

A Bayesian binomial mixed GLM (statsmodels BinomialBayesMixedGLM, variational Bayes) models
every answer: correct ~ treated * related (+ model fixed effects), with random intercepts for
question and language. The treated:related interaction is the family gap on the logit scale.
Its posterior SD is not a trustworthy uncertainty for this contrast: the mean-field VB
approximation understates posterior spread, and the related indicator is a language-level
covariate carried by a handful of languages, whose variance component VB estimates poorly
(0.45 +/- 0.03 on a simulated 7 x 6 x 3 x 100 study). Use `family_gap` for
inference; read this as a check that the item-level picture agrees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

from relxfer.compare.stats.common import AnalysisResult, fmt_num
from relxfer.compare.stats.data import (
    collapse_seedless,
    missing_conditions,
    paired_wide,
    validate_items,
)

# Below this many languages in either group, posterior SDs of the interaction are flagged.
FEW_LANGUAGES = 10
# Rows the fit may use. fit_vb's time grows faster than the rows (measured on 2 shared cores:
# 8,400 rows 5 s, 16,800 6-11 s, 67,200 30 s, 386,400 250 s); past the cap whole seeds are left
# out (see `mixed_model`). 10,000 fits one seed of the paper's design (7 x 6 x 100 x 2 rows).
MAX_ROWS = 10_000
INTERACTION = "treated:related"


@dataclass
class MixedModelResult(AnalysisResult):
    """Posterior mean and SD of the treated x related interaction (see `mixed_model`)."""

    condition: str
    reference: str
    scale: str = "logit"
    interaction_mean: float | None = None
    interaction_sd: float | None = None
    language_sd: float | None = None
    question_sd: float | None = None
    n_rows: int = 0  # rows fitted
    n_rows_available: int = 0  # paired rows before the MAX_ROWS cap
    n_seeds: int = 0  # seeds fitted
    n_seeds_available: int = 0
    n_related: int = 0
    n_control: int = 0
    intervals_too_narrow: bool = True
    formula: str = ""
    note: str = ""
    method: str = ""
    summary: str = ""  # one plain sentence
    detail: str = ""
    reason: str | None = None


def mixed_model(
    items: pd.DataFrame, condition: str = "finetuned", reference: str = "baseline", max_rows: int | None = MAX_ROWS
) -> MixedModelResult:
    """Fit the item-level logistic mixed model on `reference` + `condition` rows (paired items
    only, seeds pooled) and return the interaction's posterior mean and SD (logit scale).

    At most `max_rows` rows are fitted (None: all): when the paired rows exceed it, the fit uses
    the first seeds (in sorted order, at least one, whole seeds so every model x language x
    question stays) that fit under it; `n_seeds`/`n_seeds_available`, `n_rows`/
    `n_rows_available` and the note say so. Seeds add little here: a seedless reference
    (baseline) is the same rows repeated for every seed, which this model would count as new
    data.

    Formula: correct ~ treated * related [+ C(model)], treated = 1 for `condition` rows,
    related = 1 for related languages; variance components: question_id and language; fitted
    with `fit_vb`. `intervals_too_narrow` is True when fewer than 10 languages sit in either
    group (always, for studies of this size): the posterior SD then understates uncertainty,
    see the module docstring. Never raises on small or degenerate data: the numeric fields are
    None and `reason` says why.
    """
    result = MixedModelResult(condition=condition, reference=reference)
    result.method = (
        "Bayesian binomial mixed GLM (statsmodels BinomialBayesMixedGLM.fit_vb), random intercepts "
        "for question and language; descriptive only: inference on the family gap is family_gap's."
    )
    try:
        frame = validate_items(items)
        missing = missing_conditions(frame, (reference, condition))
        if missing:
            return _fail(result, f"condition(s) {missing} have no items")
        data = _long_rows(frame, reference, condition)
    except Exception as error:  # noqa: BLE001 - descriptive add-on: report, do not stop the comparison
        return _fail(result, f"cannot prepare data: {error}")
    result.n_rows_available = len(data)
    result.n_seeds_available = int(data["seed"].nunique())
    data = _cap_rows(data, max_rows)
    result.n_seeds = int(data["seed"].nunique())
    languages = data.drop_duplicates("language")
    result.n_related = int((languages["related"] == 1).sum())
    result.n_control = int((languages["related"] == 0).sum())
    result.n_rows = len(data)
    if min(result.n_related, result.n_control) < 1 or data["question_id"].nunique() < 2:
        return _fail(result, "needs related and control languages and at least 2 questions")
    result.formula = "correct ~ treated * related" + (" + C(model)" if data["model"].nunique() > 1 else "")
    try:
        fit = _fit(data, result.formula)
    except Exception as error:  # noqa: BLE001 - statsmodels raises various numerical errors on tiny data
        return _fail(result, f"fit failed: {type(error).__name__}: {error}")
    names = list(fit.model.fep_names)
    result.interaction_mean = float(fit.fe_mean[names.index(INTERACTION)])
    result.interaction_sd = float(fit.fe_sd[names.index(INTERACTION)])
    vc_sd = dict(zip(fit.model.vcp_names, np.exp(fit.vcp_mean)))
    result.language_sd, result.question_sd = float(vc_sd["language"]), float(vc_sd["question"])
    if not np.isfinite([result.interaction_mean, result.interaction_sd]).all():
        return _fail(result, "fit returned non-finite estimates")
    few = min(result.n_related, result.n_control) < FEW_LANGUAGES
    result.intervals_too_narrow = few
    capped = result.n_rows < result.n_rows_available
    subset = (
        f"Fitted on {result.n_seeds} of {result.n_seeds_available} seeds ({result.n_rows:,} of "
        f"{result.n_rows_available:,} paired rows; cap {max_rows:,}) to bound the fit's run time. "
        if capped
        else ""
    )
    result.note = subset + (
        f"The contrast is carried by {result.n_related} related and {result.n_control} control "
        "languages: the VB posterior SD is too narrow for this language-level covariate; use "
        "family_gap's language-clustered interval and permutation test for inference."
        if few
        else "Enough languages per group for the posterior SD to be indicative, still approximate (VB)."
    )
    direction = "more" if result.interaction_mean >= 0 else "less"
    result.summary = (
        f"{condition} vs {reference}, item-level mixed model (a description, not a test"
        f"{f'; {result.n_seeds} of {result.n_seeds_available} seeds' if capped else ''}): related languages "
        f"gained {fmt_num(abs(result.interaction_mean))} logits {direction} than controls "
        f"(posterior SD {fmt_num(result.interaction_sd)}{', too narrow: few languages' if few else ''})."
    )
    result.detail = (
        f"Interaction {condition} x related on the logit scale; language SD {fmt_num(result.language_sd)}, "
        f"question SD {fmt_num(result.question_sd)}. {result.note}"
    )
    return result


def _long_rows(frame: pd.DataFrame, reference: str, condition: str) -> pd.DataFrame:
    # Two seedless conditions (cot vs baseline) are one run each, not one per seed.
    wide = paired_wide(collapse_seedless(frame, [reference, condition]), [reference, condition])
    data = wide.melt(
        id_vars=["model", "seed", "language", "question_id", "role"],
        value_vars=[reference, condition],
        var_name="condition",
        value_name="correct",
    )
    data["treated"] = (data["condition"] == condition).astype(float)
    data["related"] = (data["role"] == "related").astype(float)
    data["correct"] = data["correct"].astype(float)
    return data


def _cap_rows(data: pd.DataFrame, max_rows: int | None) -> pd.DataFrame:
    """The rows of the first seeds (sorted; at least one) whose rows fit under `max_rows`."""
    if max_rows is None or len(data) <= max_rows:
        return data
    per_seed = data["seed"].value_counts().sort_index()
    keep = per_seed.index[per_seed.cumsum().to_numpy() <= max_rows]
    keep = keep if len(keep) else per_seed.index[:1]
    return data[data["seed"].isin(keep)]


def _fit(data: pd.DataFrame, formula: str) -> Any:  # statsmodels' BayesMixedGLMResults (untyped)
    vc = {"question": "0 + C(question_id)", "language": "0 + C(language)"}
    model = BinomialBayesMixedGLM.from_formula(formula, vc, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit_vb()


def _fail(result: MixedModelResult, reason: str) -> MixedModelResult:
    result.reason = reason
    result.interaction_mean = result.interaction_sd = None
    result.summary = f"{result.condition} vs {result.reference}: item-level mixed model not fitted: {reason}."
    return result
