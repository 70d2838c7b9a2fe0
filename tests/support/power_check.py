"""Check `relxfer plan`'s detectable effects through compare itself: plant the predicted effect
in studies simulated in the runner's logged format (`tests.support.simulate`) and count how
often compare's analysis calls it a finding. Shared by bench/power_validation.py (500 studies a
design) and tests/test_power.py (a quick version)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relxfer.compare.power.assumptions import Assumptions
from relxfer.compare.power.design import StudyDesign
from relxfer.compare.power.report import PowerReport
from relxfer.compare.stats import baseline_gain, family_gap, paired_gains
from tests.support.simulate import simulate_points_study

NO_RANDOM_GAINS = dict(model_gain_sd=0.0, language_gain_sd=0.0, cell_gain_sd=0.0, seed_sd=0.0)


@dataclass(frozen=True)
class Check:
    analysis: str  # family_gap | per_language | slope
    predicted: float  # the planted effect: plan's detectable effect
    findings: int  # studies (per_language: model x language gains) compare called a finding
    trials: int
    studies: int

    @property
    def power(self) -> float:
        return self.findings / self.trials


def simulation_settings(design: StudyDesign, a: Assumptions) -> dict[str, object]:
    """`simulate_points_study` arguments for the design and assumptions plan simulated."""
    half = a.baseline_spread / 2
    baselines = (
        np.linspace(a.baseline - half, a.baseline + half, design.n_models) if design.n_models > 1 else [a.baseline]
    )
    return dict(
        n_models=design.n_models,
        n_related=design.n_related,
        n_control=design.n_control,
        n_questions=design.items_per_language,
        questions_per_passage=design.questions_per_passage,
        n_seeds=design.n_seeds,
        model_baselines=list(baselines),
        language_sd=a.language_sd,
        cell_sd=0.0,  # plan's model has no model x language term in the baseline
        gain=a.gain,
        model_gain_sd=a.model_gain_sd,
        language_gain_sd=a.language_gain_sd,
        cell_gain_sd=a.cell_gain_sd,
        seed_sd=a.seed_sd,
        question_sd=a.question_sd,
        passage_correlation=a.passage_correlation,
    )


def check_family_gap(report: PowerReport, studies: int, seed: int = 0) -> Check:
    assert report.gap is not None and report.gap.detectable is not None
    settings = simulation_settings(report.design, report.assumptions)
    found = 0
    for i in range(studies):
        items = simulate_points_study(**settings, family_gap=report.gap.detectable, seed=seed + i)
        found += family_gap(items, "finetuned", adjustment=None).conclusion == "above"
    return Check("family_gap", report.gap.detectable, found, studies, studies)


def check_slope(report: PowerReport, studies: int, seed: int = 0) -> Check:
    assert report.slope.detectable is not None
    settings = simulation_settings(report.design, report.assumptions)
    found = 0
    for i in range(studies):
        items = simulate_points_study(**settings, gain_slope=-report.slope.detectable, seed=seed + i)
        found += baseline_gain(items, "finetuned", n_splits=2).conclusion == "below"
    return Check("slope", report.slope.detectable, found, studies, studies)


def check_per_language(report: PowerReport, studies: int, seed: int = 0) -> Check:
    assert report.paired.detectable is not None
    settings = simulation_settings(report.design, report.assumptions) | NO_RANDOM_GAINS
    settings["gain"] = report.paired.detectable
    found = trials = 0
    for i in range(studies):
        gains = paired_gains(simulate_points_study(**settings, seed=seed + i), "finetuned")
        found += int((gains["verdict"] == "above").sum())
        trials += len(gains)
    return Check("per_language", report.paired.detectable, found, trials, studies)
