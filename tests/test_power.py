"""`relxfer plan`'s power report (relxfer.compare.power): the permutation floor against exact
enumeration, detectable effects checked through compare's own analyses (a quick version of
bench/power_validation.py), assumptions estimated from a pilot, and bad assumptions as one-line
errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from relxfer.cli import main
from relxfer.compare.power.assumptions import Assumptions
from relxfer.compare.power.design import StudyDesign
from relxfer.compare.power.family import closed_form_gap
from relxfer.compare.power.floor import permutation_floor
from relxfer.compare.power.pilot import estimate_assumptions
from relxfer.compare.power.report import power_report
from relxfer.compare.stats import family_gap
from tests.support.power_check import check_family_gap, check_per_language, check_slope
from tests.support.simulate import simulate_points_study

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n_related, n_control", [(r, c) for r in range(1, 7) for c in range(1, 7) if r + c <= 10])
def test_permutation_floor_equals_exact_enumeration(n_related, n_control):
    """The smallest two-sided p over every assignment of languages to groups, enumerated: the
    observed assignment is the most extreme one (related languages gained far more), and every
    assignment's gap is compared with it."""
    rng = np.random.default_rng(n_related * 10 + n_control)
    gains = rng.normal(0, 0.01, n_related + n_control)
    gains[:n_related] += 1.0
    languages = range(n_related + n_control)

    def gap(related):
        chosen = np.isin(languages, related)
        return gains[chosen].mean() - gains[~chosen].mean()

    gaps = np.array([gap(a) for a in itertools.combinations(languages, n_related)])
    observed = gap(tuple(range(n_related)))
    enumerated = np.mean(np.abs(gaps) >= abs(observed) - 1e-12)
    floor = permutation_floor(n_related, n_control)
    assert floor.smallest_p == pytest.approx(enumerated)
    assert floor.n_assignments == math.comb(n_related + n_control, n_related) and floor.exact
    assert floor.finding_possible == (min(n_related, n_control) >= 3 and enumerated < 0.05)


@pytest.mark.parametrize("n_related, n_control", [(3, 3), (5, 5), (4, 6)])
def test_permutation_floor_is_what_compare_reports(n_related, n_control):
    items = simulate_points_study(n_models=2, n_related=n_related, n_control=n_control, family_gap=0.3, seed=4)
    result = family_gap(items, adjustment=None)
    assert result.perm_min_p == pytest.approx(permutation_floor(n_related, n_control).smallest_p)


def test_full_spec_names_the_floor_and_warns_in_one_sentence():
    result = CliRunner().invoke(main, ["plan", str(REPO / "specs" / "full.json")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert (
        "3 related vs 3 control languages; exact permutation test over 20 assignments, smallest possible p 0.100" in out
    )
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warning == [
        "warning: with 3 related and 3 control languages the rule can never call a family gap a finding: the exact "
        "permutation test's smallest possible p is 0.100, not below 0.05; 3 + 4, 4 + 3 or 4 + 4 languages could."
    ]
    assert "family gap: 80% power" not in out
    assert "per-language gain: 80% power for a gain of " in out
    assert "baseline-gain slope: 80% power for a slope of -" in out
    seconds = float(out.split("power computed in ")[1].split(" s")[0])
    assert seconds < 30  # a few seconds on an idle 2-core machine; loose for a loaded one


def test_smoke_spec_gets_a_detectable_gap():
    result = CliRunner().invoke(main, ["plan", str(REPO / "specs" / "smoke.json"), "--assume", "gain=0.3"])
    assert result.exit_code == 0, result.output
    assert (
        "5 related vs 5 control languages; exact permutation test over 252 assignments, smallest possible p 0.008"
        in result.output
    )
    assert "warning:" not in result.output
    assert "family gap: 80% power for a gap of " in result.output
    assert "assumptions (defaults; set: gain=0.3): baseline 45%" in result.output


@pytest.fixture(scope="module")
def report_5_5():
    return power_report(StudyDesign(5, 5, 2, 100, 2), Assumptions())


@pytest.mark.parametrize(
    "check, studies, tolerance",
    [(check_family_gap, 80, 0.15), (check_slope, 80, 0.15), (check_per_language, 20, 0.12)],
)
def test_power_at_the_detectable_effect_is_80_percent_through_compare(report_5_5, check, studies, tolerance):
    """A quick version of bench/power_validation.py (500 studies a design there): plant plan's
    detectable effect, analyse with compare's own functions, count findings."""
    result = check(report_5_5, studies, seed=50_000)
    assert abs(result.power - 0.8) <= tolerance, result


def test_detectable_gap_falls_with_languages_and_sizing_is_consistent(report_5_5):
    a, noise = Assumptions(), report_5_5.gap.gain_noise_var
    gaps = [closed_form_gap(n, n, 2, a, noise) for n in (4, 5, 8, 12)]
    assert gaps == sorted(gaps, reverse=True)
    assert closed_form_gap(3, 3, 2, a, noise) is None  # the floor: no finding possible
    sizing = report_5_5.sizing
    n = sizing.languages_per_family
    assert n is not None
    assert sizing.calibration * closed_form_gap(n, n, 2, a, noise) <= sizing.target
    assert sizing.calibration * closed_form_gap(n - 1, n - 1, 2, a, noise) > sizing.target


def test_compare_says_what_a_null_rules_out_and_what_the_design_detects():
    items = simulate_points_study(n_models=2, n_related=5, n_control=5, seed=3)
    result = family_gap(items, adjustment=None)
    assert result.conclusion == "none"
    q = stats.t.ppf(0.975, result.df) + stats.t.ppf(0.8, result.df)
    assert result.detectable_gap == pytest.approx(q * result.se)
    assert (
        f"The data rule out an edge for related languages larger than {100 * result.ci_high:.1f} points and for "
        f"controls larger than {-100 * result.ci_low:.1f} points"
    ) in result.summary
    assert f"a gap of about {100 * result.detectable_gap:.1f} points would be detected with 80% power" in result.summary
    three = family_gap(simulate_points_study(n_models=2, n_related=3, n_control=3, seed=3), adjustment=None)
    assert three.detectable_gap is None and "no gap is detectable with this many languages" in three.summary


def test_pilot_estimates_recover_planted_components():
    planted = dict(
        n_models=7, n_related=4, n_control=4, n_questions=100, questions_per_passage=4, language_gain_sd=0.08,
        cell_gain_sd=0.03, model_gain_sd=0.04, gain=0.2, language_sd=0.04, cell_sd=0.0, passage_correlation=0.3,
        model_baselines=list(np.linspace(0.35, 0.55, 7)),
    )  # fmt: skip
    estimates = [estimate_assumptions(simulate_points_study(**planted, seed=s), "pilot").assumptions for s in range(4)]
    mean = {key: np.mean([getattr(e, key) for e in estimates]) for key in ("baseline", "gain", "language_gain_sd")}
    assert mean["baseline"] == pytest.approx(0.45, abs=0.02)
    assert mean["gain"] == pytest.approx(0.2, abs=0.03)
    assert mean["language_gain_sd"] == pytest.approx(0.08, abs=0.03)
    assert all(e.questions_per_passage == 4 for e in estimates)
    assert all(e.baseline_spread == pytest.approx(0.2, abs=0.06) for e in estimates)
    assert all(0.1 < e.passage_correlation < 0.6 for e in estimates)


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize(
    "assume, message",
    [
        (
            "language_gain_sd=-0.01",
            "Error: assumption language_gain_sd=-0.01: a standard deviation or spread cannot be negative",
        ),
        ("passage_correlation=1", "Error: assumption passage_correlation=1: a correlation must lie in [0, 1)"),
        ("passage_correlation=-0.2", "Error: assumption passage_correlation=-0.2: a correlation must lie in [0, 1)"),
        ("language_gain_sd", "Error: --assume 'language_gain_sd': expected KEY=VALUE, e.g. language_gain_sd=0.05"),
        ("lang_sd=0.1", "Error: --assume 'lang_sd=0.1': unknown assumption 'lang_sd'; known: baseline,"),
        ("gain=much", "Error: --assume 'gain=much': 'much' is not a number"),
    ],
)
def test_impossible_assumptions_are_one_line_errors(assume, message):
    line = one_line_error(["plan", str(REPO / "specs" / "smoke.json"), "--assume", assume])
    assert line.startswith(message)


def test_a_pilot_experiment_without_runs_is_a_one_line_error(tmp_path):
    from relxfer.tracking.client import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri).experiment_id("pilot")
    line = one_line_error(
        ["plan", str(REPO / "specs" / "smoke.json"), "--from-experiment", "pilot", "--tracking-uri", uri]
    )
    assert line == "Error: pilot experiment 'pilot' has no finished evaluation runs: nothing to estimate from"
