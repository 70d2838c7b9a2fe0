"""Estimate the power assumptions from a pilot study's items (what `relxfer compare` reads back
from the tracking server), by the method of moments on model x language cells:

- baseline, its spread over models and the language SD: from the reference accuracies;
- mean gain, and the SDs of gains between languages, models and model x language cells: a
  two-way decomposition of the cells' gains, each variance less the part the cells' sampling
  noise explains (that noise from the passages, `stats.measurement.error_moments`), floored at 0;
- the within-passage correlation: from the runs' design effects (passages of several questions
  only), turned into the latent correlation of the simulator at the runs' mean accuracy.

Question difficulty and seed SDs keep their defaults (a pilot rarely measures them)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import optimize, stats

from relxfer.compare.power.assumptions import AssumptionError, Assumptions, checked
from relxfer.compare.stats.data import gain_cells, validate_items
from relxfer.compare.stats.measurement import error_moments
from relxfer.evaluate.intervals import design_effect


@dataclasses.dataclass(frozen=True)
class PilotEstimate:
    assumptions: Assumptions
    condition: str
    n_models: int
    n_languages: int
    notes: tuple[str, ...]


def estimate_assumptions(items: pd.DataFrame, name: str, reference: str = "baseline") -> PilotEstimate:
    """The assumptions a pilot's items suggest (see the module docstring). `name` names the
    pilot in errors."""
    if items.empty:
        raise AssumptionError(f"pilot experiment '{name}' has no finished evaluation runs: nothing to estimate from")
    frame = validate_items(items)
    present = sorted(set(frame["condition"]) - {reference})
    if reference not in set(frame["condition"]) or not present:
        raise AssumptionError(
            f"pilot experiment '{name}' needs runs of {reference} and of another condition; it has {sorted(set(frame['condition']))}"
        )
    condition = "finetuned" if "finetuned" in present else present[0]
    wide, cells = gain_cells(frame, reference, condition, "raw")
    v, w = error_moments(wide, cells, reference, condition)
    v1, _ = error_moments(wide, cells, condition, condition)
    noise = float(np.nanmean(v + v1 - 2 * w))
    notes = []
    base = cells.pivot(index="model", columns="language", values=f"acc_{reference}")
    gain = cells.pivot(index="model", columns="language", values="gain")
    M, L = gain.shape
    model_means = base.mean(axis=1)
    language_sd = _sd(base.mean(axis=0).var(ddof=1) - float(np.nanmean(v)) / M) if L > 1 else 0.0
    language_gain, model_gain, cell_gain = _two_way(gain.to_numpy(float), noise)
    if M == 1:
        notes.append("one model: the model x language SD of gains cannot be told from the language SD (set to 0)")
    rho, rho_note = _passage_correlation(frame)
    if rho_note:
        notes.append(rho_note)
    spread = float(model_means.max() - model_means.min()) if M > 1 else 0.0
    questions = frame.groupby(["model", "seed", "condition", "language", "passage_id"]).size().mean()
    estimate = dataclasses.replace(
        Assumptions(),
        baseline=float(model_means.mean()),
        baseline_spread=spread,
        language_sd=language_sd,
        gain=float(np.nanmean(gain.to_numpy(float))),
        language_gain_sd=language_gain,
        model_gain_sd=model_gain,
        cell_gain_sd=cell_gain,
        passage_correlation=rho if rho is not None else Assumptions().passage_correlation,
        questions_per_passage=max(1, int(round(float(questions)))),
    )
    return PilotEstimate(checked(estimate), condition, M, L, tuple(notes))


def _sd(variance: float) -> float:
    return math.sqrt(variance) if variance > 0 else 0.0


def _two_way(gains: np.ndarray, noise: float) -> tuple[float, float, float]:
    """(language, model, model x language) SDs of true gains from a models x languages table of
    measured gains whose cells carry sampling variance `noise`."""
    M, L = gains.shape
    grand = np.nanmean(gains)
    models, languages = np.nanmean(gains, axis=1), np.nanmean(gains, axis=0)
    residual = gains - models[:, None] - languages[None, :] + grand
    cell = 0.0
    if M > 1 and L > 1:
        cell = np.nansum(residual**2) / ((M - 1) * (L - 1)) - noise
    within = max(cell, 0.0) + noise
    language = _sd(float(np.var(languages, ddof=1)) - within / M) if L > 1 else 0.0
    model = _sd(float(np.var(models, ddof=1)) - within / L) if M > 1 else 0.0
    return language, model, _sd(cell)


def _passage_correlation(frame: pd.DataFrame) -> tuple[float | None, str | None]:
    """The latent within-passage correlation matching the runs' mean design effect."""
    runs = frame.groupby(["model", "seed", "condition", "language", "passage_id"])["correct"].agg(["sum", "size"])
    if runs["size"].max() < 2:
        return None, "one question per passage: the within-passage correlation keeps its default"
    effects, sizes = [], []
    for _, block in runs.groupby(level=[0, 1, 2, 3]):
        n = block["size"].sum()
        p = block["sum"].sum() / n
        effects.append(design_effect(block["sum"].to_numpy(), block["size"].to_numpy(), p))
        sizes.append(float(np.sum(block["size"] ** 2) / n))  # mean cluster size an item sits in
    p = float(frame["correct"].mean())
    icc = max(0.0, (float(np.mean(effects)) - 1) / max(float(np.mean(sizes)) - 1, 1e-9))
    return _latent(p, min(icc, 0.95)), None


def _latent(p: float, icc: float) -> float:
    """The latent (Gaussian copula) correlation whose 0/1 answers at accuracy p correlate `icc`."""
    if icc <= 0 or not 0 < p < 1:
        return 0.0
    z = stats.norm.ppf(p)

    def gap(rho: float) -> float:
        joint = stats.multivariate_normal.cdf([z, z], cov=[[1, rho], [rho, 1]])
        return float((joint - p * p) / (p * (1 - p)) - icc)

    if gap(0.95) < 0:
        return 0.95
    return float(optimize.brentq(gap, 0.0, 0.95))
