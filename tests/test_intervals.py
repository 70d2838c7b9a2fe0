"""The clustered accuracy interval: its variance against statsmodels' cluster-robust OLS, and the
run metric equal to compare's accuracy table (one implementation for both)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

from relxfer.compare.stats import accuracy_table
from relxfer.evaluate.intervals import (
    cluster_mean_var,
    clustered_accuracy_interval,
    design_effect,
)

pytestmark = pytest.mark.unit


def clustered_outcomes(seed=0, n_passages=40, per_passage=2):
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(n_passages), per_passage)
    ability = rng.normal(scale=1.5, size=n_passages)[clusters]
    y = (rng.random(clusters.size) < 1 / (1 + np.exp(-ability))).astype(float)
    return y, clusters


def test_cluster_variance_matches_statsmodels():
    y, clusters = clustered_outcomes()
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": clusters})
    sums = np.bincount(clusters, weights=y)
    counts = np.bincount(clusters)
    # statsmodels' CR1 factor G/(G-1) * (n-1)/(n-k) reduces to G/(G-1) for a mean (k = 1).
    assert np.isclose(cluster_mean_var(sums, counts, y.mean()), fit.bse[0] ** 2, rtol=1e-10)


def test_unclustered_items_give_the_wilson_interval_up_to_the_t_correction():
    y = np.array([1] * 30 + [0] * 70, dtype=float)
    low, high = clustered_accuracy_interval(y, np.arange(100))
    wilson = proportion_confint(30, 100, method="wilson")
    # Same centre; the t(G-1) critical value makes it a little wider than the normal Wilson.
    assert low < wilson[0] < 0.3 < wilson[1] < high
    assert np.isclose(low, wilson[0], atol=0.003) and np.isclose(high, wilson[1], atol=0.003)


def test_clustering_widens_the_interval_when_clusters_agree():
    y = np.repeat([1, 0, 1, 1, 0, 1, 0, 1, 1, 0], 2).astype(float)
    singles = clustered_accuracy_interval(y, np.arange(20))
    paired = clustered_accuracy_interval(y, np.repeat(np.arange(10), 2))
    assert paired[1] - paired[0] > singles[1] - singles[0]
    assert design_effect(np.bincount(np.repeat(np.arange(10), 2), weights=y), np.full(10, 2), y.mean()) > 1.9


def test_interval_stays_in_range_at_the_floor_and_ceiling():
    for y in (np.zeros(30), np.ones(30)):
        low, high = clustered_accuracy_interval(y, np.arange(30))
        assert 0 <= low <= y.mean() <= high <= 1
        assert high - low < 0.2


def test_run_metric_equals_compare_accuracy_table():
    y, clusters = clustered_outcomes(seed=3)
    items = pd.DataFrame(
        {
            "model": "m",
            "seed": 0,
            "condition": "baseline",
            "language": "xxx_Latn",
            "group": "g",
            "role": "related",
            "question_id": [f"q{i}" for i in range(y.size)],
            "passage_id": [f"p{c}" for c in clusters],
            "gold": 0,
            "predicted": np.where(y == 1, 0, 1),
            "correct": y.astype(int),
        }
    )
    row = accuracy_table(items).iloc[0]
    assert (row["ci_low"], row["ci_high"]) == clustered_accuracy_interval(y, clusters)
