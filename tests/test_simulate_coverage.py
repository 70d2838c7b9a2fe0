"""The simulator's contract, and the operating characteristics of the lead methods on simulated
studies with planted effects (the scenarios of bench/compare_simulations.py at a smaller size;
fixed seeds).

The same scenarios with >= 200 studies each, beside the estimators compare does not lead with, are
bench/compare_simulations.py's (results in bench/results/compare_simulations.json and
bench/README.md). Here:
- family gap, no gap, related languages 7 points higher at baseline: the interval covers zero,
  few false findings, while the measured-baseline adjustment is pulled toward the related
  family;
- family gap, a planted 12-point gap: the mean estimate is within 1.5 points of 12;
- per-language gains, no true gain, answers correlated within passages: the passage sign-flip
  test keeps its level where McNemar's does not;
- baseline-gain slope, true slope -0.5 with 6 models: the corrected slope's interval covers it
  and excludes 0 more often than the split-half slope; with no true slope the naive slope is
  pulled down while the corrected one is not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relxfer.compare.stats import baseline_gain, family_gap, mcnemar_test, paired_gains
from relxfer.compare.stats.data import COLUMNS, on_scale
from relxfer.compare.stats.family_fits import fit_ols
from tests.support.simulate import simulate_points_study, simulate_study
from tests.support.simulate.runs import Questions, SimRun, runs_to_items

pytestmark = pytest.mark.unit

TWO_CONDITIONS = ("baseline", "finetuned")
SIX_MODELS = dict(n_models=6, model_baselines=np.linspace(0.30, 0.70, 6), gain=0.25)


# ---------------------------------------------------------------- simulator contract


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return simulate_study(n_models=3, n_questions=30, questions_per_passage=3, n_seeds=2, cot_parse_failure=0.2, seed=1)


def test_simulated_items_follow_the_input_contract(items):
    assert tuple(items.columns[: len(COLUMNS)]) == COLUMNS
    assert len(items) == 3 * 6 * 2 * 30 * 3  # models x languages x seeds x questions x conditions
    assert set(items["condition"]) == {"baseline", "finetuned", "cot"}
    assert set(items["role"]) == {"related", "control"}
    assert items.groupby("role")["language"].nunique().to_dict() == {"related": 3, "control": 3}
    assert set(items.loc[items["role"] == "related", "group"]) == {"Semitic"}
    assert not items.duplicated(["model", "seed", "condition", "language", "question_id"]).any()
    assert items.groupby("question_id")["passage_id"].nunique().eq(1).all()
    assert items.groupby("passage_id")["question_id"].nunique().eq(3).all()


def test_answers_are_in_the_runners_format(items):
    # predicted is the scored label (argmax of the label log-probs), correct follows it; a CoT
    # parse failure is extracted == -1 and leaves the scored answer alone, as in the runner.
    logprobs = items[["logprob_1", "logprob_2", "logprob_3", "logprob_4"]].to_numpy()
    assert (logprobs.argmax(axis=1) == items["predicted"]).all()
    assert ((items["predicted"] == items["gold"]) == (items["correct"] == 1)).all()
    cot = items["condition"] == "cot"
    assert items.loc[~cot, "extracted"].isna().all()
    failed = cot & (items["extracted"] == -1)
    assert 0.1 < failed.sum() / cot.sum() < 0.3
    assert (items.loc[cot & ~failed, "extracted"] == items.loc[cot & ~failed, "predicted"]).all()
    assert items.loc[failed, "correct"].nunique() == 2
    assert items.groupby("question_id")["gold"].nunique().eq(1).all()  # parallel questions


def test_baseline_and_cot_are_seedless_like_the_runners(items):
    seedless = items[items["seedless"]]
    assert set(seedless["condition"]) == {"baseline", "cot"}
    for condition in ("baseline", "cot"):
        runs = items[items["condition"] == condition].pivot_table(
            index=["model", "language", "question_id"], columns="seed", values="correct"
        )
        assert (runs[0] == runs[1]).all()
    finetuned = items[items["condition"] == "finetuned"].pivot_table(
        index=["model", "language", "question_id"], columns="seed", values="correct"
    )
    assert (finetuned[0] != finetuned[1]).any()


def test_fast_tables_equal_the_runners_make_records():
    rng = np.random.default_rng(0)
    questions = Questions.make(rng, 12, 3)
    runs = [
        SimRun(
            "m",
            c,
            "heb_Hebr",
            "Semitic",
            "related",
            None,
            rng.integers(0, 2, 12),
            rng.random(12) < 0.3 if c == "cot" else None,
        )
        for c in ("baseline", "cot")
    ]
    fast = runs_to_items(np.random.default_rng(5), runs, questions)
    slow = runs_to_items(np.random.default_rng(5), runs, questions, via_records=True)
    pd.testing.assert_frame_equal(fast, slow)


def test_points_simulator_plants_accuracies_in_points():
    big = simulate_points_study(
        n_models=2,
        n_questions=2000,
        model_baselines=[0.4, 0.6],
        family_baseline_gap=0.07,
        language_sd=0,
        cell_sd=0,
        gain=0.1,
        family_gap=0.12,
        model_gain_sd=0,
        language_gain_sd=0,
        cell_gain_sd=0,
        seed_sd=0,
        seed=2,
    )
    acc = big.groupby(["model", "role", "condition"])["correct"].mean().unstack("condition")
    assert acc.loc[("sim-m1", "control"), "baseline"] == pytest.approx(0.40, abs=0.02)
    assert acc.loc[("sim-m1", "related"), "baseline"] == pytest.approx(0.47, abs=0.02)
    gain = acc["finetuned"] - acc["baseline"]
    assert gain.xs("related", level="role").to_numpy() == pytest.approx([0.22, 0.22], abs=0.03)
    assert gain.xs("control", level="role").to_numpy() == pytest.approx([0.10, 0.10], abs=0.03)


def test_simulator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="3 values for 7 models"):
        simulate_study(model_abilities=[0, 1, 2])
    with pytest.raises(ValueError, match="correlation in \\[0, 1\\]"):
        simulate_study(baseline_noise=1.5)
    with pytest.raises(ValueError, match="2 values for 3 models"):
        simulate_points_study(n_models=3, model_baselines=[0.3, 0.5])


# ---------------------------------------------------------------- family gap


def _gaps(n_studies: int, first_seed: int, **planted):
    """(family_gap result, measured-baseline-adjusted estimate) per simulated study, raw points."""
    out = []
    for i in range(n_studies):
        items = simulate_points_study(seed=first_seed + i, **planted)
        result = family_gap(items, adjustment=None)
        cells = result.cells
        adjusted = fit_ols(cells, cells["gain"], covariate=on_scale(cells["k_baseline"], cells["n"], "raw"))
        out.append((result, adjusted.estimate))
    return out


def test_family_gap_stays_honest_when_families_differ_in_baseline():
    studies = _gaps(60, first_seed=1000, family_gap=0.0, family_baseline_gap=0.07)
    results = [r for r, _ in studies]
    covered = np.mean([r.ci_low <= 0 <= r.ci_high for r in results])
    findings = np.mean([r.conclusion in ("above", "below") for r in results])
    mean = np.mean([r.estimate for r in results])
    adjusted_mean = np.mean([adjusted for _, adjusted in studies])
    assert covered >= 0.90, f"coverage {covered:.3f}"
    assert findings <= 0.07, f"false findings {findings:.3f}"
    assert abs(mean) < 0.02, f"mean estimate {mean:+.3f}"
    assert adjusted_mean > 0.03, (
        f"the measured-baseline adjustment should be pulled toward the related family: {adjusted_mean:+.3f}"
    )


def test_family_gap_estimates_a_planted_12_point_gap():
    studies = _gaps(60, first_seed=5000, family_gap=0.12, family_baseline_gap=0.07)
    mean = np.mean([r.estimate for r, _ in studies])
    assert abs(mean - 0.12) <= 0.015, f"mean estimate {mean:.3f}"
    assert np.mean([r.ci_low > 0 for r, _ in studies]) >= 0.3
    assert np.mean([r.conclusion == "above" for r, _ in studies]) >= 0.15


# ---------------------------------------------------------------- per-language gains


@pytest.mark.parametrize("rho", [0.3, 0.6])
def test_passage_signflip_keeps_its_level_where_mcnemar_does_not(rho):
    signflip, mcnemar = [], []
    for i in range(30):
        items = simulate_points_study(
            gain=0.0,
            model_gain_sd=0,
            language_gain_sd=0,
            cell_gain_sd=0,
            seed_sd=0,
            passage_correlation=rho,
            seed=40_000 + i,
        )
        gains = paired_gains(items, "finetuned")
        signflip += (gains["p_value"] < 0.05).tolist()
        mcnemar += [mcnemar_test(b, c)[0] < 0.05 for b, c in zip(gains["b"], gains["c"])]
    assert np.mean(signflip) <= 0.06, f"sign-flip false positives {np.mean(signflip):.3f}"
    assert np.mean(mcnemar) > np.mean(signflip) + 0.03, f"McNemar {np.mean(mcnemar):.3f}"


# ---------------------------------------------------------------- baseline-gain slope


def _slopes(n_studies, first_seed, slope):
    return [
        baseline_gain(simulate_points_study(gain_slope=slope, seed=first_seed + i, **SIX_MODELS), n_splits=10)
        for i in range(n_studies)
    ]


def test_corrected_slope_covers_a_true_slope_and_finds_it_more_often_than_split_half():
    results = _slopes(30, 30_000, -0.5)
    covered = np.mean([r.corrected_slope_ci_low <= -0.5 <= r.corrected_slope_ci_high for r in results])
    corrected = np.mean([r.corrected_slope_ci_high < 0 for r in results])
    split_half = np.mean([r.split_half_slope_ci_high < 0 for r in results])
    assert covered >= 0.85, f"coverage {covered:.3f}"
    assert corrected > split_half + 0.1, f"corrected {corrected:.2f} vs split-half {split_half:.2f}"
    assert abs(np.mean([r.corrected_slope for r in results]) + 0.5) < 0.1


def test_without_a_true_slope_the_naive_slope_is_pulled_down_and_the_corrected_is_not():
    results = _slopes(30, 31_000, 0.0)
    naive = np.array([r.naive_slope for r in results])
    corrected = np.array([r.corrected_slope for r in results])
    assert naive.mean() + 3 * naive.std() / np.sqrt(len(naive)) < 0, f"naive mean {naive.mean():.3f}"
    assert abs(corrected.mean()) < 3 * corrected.std() / np.sqrt(len(corrected)) + 0.02
    assert np.mean([r.corrected_slope_ci_low <= 0 <= r.corrected_slope_ci_high for r in results]) >= 0.85
