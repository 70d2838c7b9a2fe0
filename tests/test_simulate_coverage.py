"""The simulator's contract, and the operating characteristics of the lead methods on
simulated studies with planted effects (fixed seeds; about 15 s on one core).

- family_gap's lead interval (CR2 by language, Bell-McCaffrey df) covers a zero gap in >= 90%
  of 200 studies with random language, passage and question effects (3 vs 3 languages);
- a planted gap large relative to the between-language spread is detected in >= 80%;
- with baseline measurement noise and no true slope, the naive baseline-gain slope is biased
  negative and its interval misses 0, while the split-half slope is centred on 0 and covers it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relxfer.compare.simulate import simulate_study
from relxfer.compare.stats import baseline_gain, family_gap
from relxfer.compare.stats_data import COLUMNS

TWO_CONDITIONS = ("baseline", "finetuned")


# ---------------------------------------------------------------- simulator contract

@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return simulate_study(n_models=3, n_questions=30, questions_per_passage=3, n_seeds=2, seed=1)


def test_simulated_items_follow_the_input_contract(items):
    assert tuple(items.columns) == COLUMNS
    assert len(items) == 3 * 6 * 2 * 30 * 3  # models x languages x seeds x questions x conditions
    assert set(items["condition"]) == {"baseline", "finetuned", "cot"}
    assert set(items["role"]) == {"related", "control"}
    assert items.groupby("role")["language"].nunique().to_dict() == {"related": 3, "control": 3}
    assert set(items.loc[items["role"] == "related", "group"]) == {"Semitic"}
    assert not items.duplicated(["model", "seed", "condition", "language", "question_id"]).any()
    assert items.groupby("question_id")["passage_id"].nunique().eq(1).all()
    assert items.groupby("passage_id")["question_id"].nunique().eq(3).all()


def test_answers_are_consistent_with_gold(items):
    parsed = items["predicted"] != -1
    assert ((items["predicted"] == items["gold"]) == (items["correct"] == 1)).all()
    assert items.loc[parsed, "predicted"].between(0, 3).all()
    assert set(items.loc[~parsed, "condition"]) <= {"cot"}
    assert (items.loc[~parsed, "correct"] == 0).all()
    # Questions are parallel: one gold answer per question in every language.
    assert items.groupby("question_id")["gold"].nunique().eq(1).all()


def test_baseline_is_scored_once_and_repeated_across_seeds(items):
    baseline = items[items["condition"] == "baseline"].pivot_table(
        index=["model", "language", "question_id"], columns="seed", values="correct")
    assert (baseline[0] == baseline[1]).all()
    finetuned = items[items["condition"] == "finetuned"].pivot_table(
        index=["model", "language", "question_id"], columns="seed", values="correct")
    assert (finetuned[0] != finetuned[1]).any()


def test_planted_effects_move_accuracies_in_the_planted_direction():
    big = simulate_study(n_models=2, n_questions=400, family_gap=1.5, finetune_gain=0.5,
                         model_abilities=[-1.0, 1.0], language_gain_sd=0.0, cell_gain_sd=0.0,
                         model_gain_sd=0.0, seed_sd=0.0, conditions=TWO_CONDITIONS, seed=2)
    acc = big.groupby(["model", "role", "condition"])["correct"].mean().unstack("condition")
    gain = acc["finetuned"] - acc["baseline"]
    assert (gain.xs("related", level="role") > gain.xs("control", level="role") + 0.1).all()
    assert acc.loc[("sim-m2", "control"), "baseline"] > acc.loc[("sim-m1", "control"), "baseline"] + 0.2


def test_simulator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="3 values for 7 models"):
        simulate_study(model_abilities=[0, 1, 2])
    with pytest.raises(ValueError, match="correlation in \\[0, 1\\]"):
        simulate_study(baseline_noise=1.5)


# ---------------------------------------------------------------- family gap: coverage, power

def _family_gaps(n_studies: int, first_seed: int, **planted):
    return [family_gap(simulate_study(conditions=TWO_CONDITIONS, seed=first_seed + i, **planted))
            for i in range(n_studies)]


def test_family_gap_interval_covers_a_zero_gap_in_at_least_90_percent():
    results = _family_gaps(200, first_seed=1000, family_gap=0.0)  # default random effects
    covered = np.mean([r.ci_low <= 0 <= r.ci_high for r in results])
    assert covered >= 0.90, f"coverage {covered:.3f}"
    # The permutation test is exact: its one-sided rejection rate stays near 5% under the null
    # (the two-sided test cannot reject at 0.05 with 3 vs 3 languages: smallest p is 0.10).
    assert np.mean([r.perm_p_greater <= 0.05 for r in results]) <= 0.10
    assert all(r.perm_min_p == pytest.approx(0.10) for r in results[:5])


def test_family_gap_detects_a_large_planted_gap_in_at_least_80_percent():
    # Gap 2.0 logits against a between-language SD of the gain of 0.3 (the default).
    results = _family_gaps(100, first_seed=5000, family_gap=2.0)
    detected = np.mean([r.ci_low > 0 and r.p_value < 0.05 for r in results])
    assert detected >= 0.80, f"power {detected:.3f}"


# ---------------------------------------------------------------- baseline-gain: regression to the mean

def test_split_half_slope_is_unbiased_where_the_naive_slope_is_not():
    # No true slope: the gain is constant on the logit scale (no chance floor, so logit accuracy
    # is the planted scale); models of similar ability and a noisy baseline (answers correlated
    # within passages) make regression to the mean strong.
    naive, split, naive_covers, split_covers = [], [], [], []
    for i in range(100):
        items = simulate_study(
            chance=0.0, model_abilities=np.linspace(-0.3, 0.3, 7), baseline_noise=0.8,
            questions_per_passage=5, language_sd=0.3, model_gain_sd=0.1, language_gain_sd=0.1,
            conditions=TWO_CONDITIONS, seed=7000 + i,
        )
        r = baseline_gain(items, "finetuned", n_splits=20, scale="logit")
        naive.append(r.naive_slope)
        split.append(r.split_half_slope)
        naive_covers.append(r.naive_slope_ci_low <= 0 <= r.naive_slope_ci_high)
        split_covers.append(r.split_half_slope_ci_low <= 0 <= r.split_half_slope_ci_high)
    naive_se = np.std(naive) / np.sqrt(len(naive))
    split_se = np.std(split) / np.sqrt(len(split))
    assert np.mean(naive) < -0.3 and np.mean(naive) + 4 * naive_se < 0, f"naive mean {np.mean(naive):.3f}"
    assert abs(np.mean(split)) < 4 * split_se + 0.02, f"split-half mean {np.mean(split):.3f}"
    assert np.mean(split_covers) >= 0.90, f"split-half coverage {np.mean(split_covers):.2f}"
    assert np.mean(naive_covers) <= 0.30, f"naive coverage {np.mean(naive_covers):.2f}"
