"""`relxfer compare` reads back exactly what the runner logged, through the tracking server only.

A small study (2 models x 6 languages x (baseline + cot + 2 fine-tuned seeds) = 48 evaluation
runs x 40 items) is logged by bench/compare_scale.py's `populate`, which runs every cell through
`CellRunner.evaluate` with a scripted engine: the same tags, params, metrics and
`predictions.json` tables as `relxfer run`. The item frame `load_items` rebuilds must equal the
logged records row for row and column for column, with search_runs paging exercised (a page
size of 7 through the tracker's setting; the server is real), for `--experiment` and `--parent`.
The scale itself (2,000 runs) is bench/compare_scale.py's job, not this test's. Then every number
of `relxfer compare --format json` is recomputed from the logged tables without relxfer
(tests/recompute.py: MlflowClient, statsmodels, scipy) and must agree.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from bench.compare_scale import populate
from relxfer.cli import main
from relxfer.compare.frame import ITEM_COLUMNS, load_items
from relxfer.errors import TrackingError
from relxfer.tracking.client import TAG, Tracker
from tests import recompute

pytestmark = pytest.mark.integration

EXPERIMENT = "compare-scale-test"
N_MODELS, N_SEEDS, N_QUESTIONS = 2, 2, 40
N_RUNS = N_MODELS * 6 * (2 + N_SEEDS)  # 48
PAGE = 7


@pytest.fixture(scope="module")
def study(mlflow_server, tmp_path_factory):
    return populate(
        mlflow_server.uri,
        EXPERIMENT,
        n_models=N_MODELS,
        n_seeds=N_SEEDS,
        n_questions=N_QUESTIONS,
        workers=8,
        workdir=tmp_path_factory.mktemp("compare-scale"),
        log=lambda _: None,
    )


def expected_items(study) -> pd.DataFrame:
    """The logged records of every run with its cell's factors; a seedless run (baseline, cot)
    once per seed of the study, as compare pairs it with every fine-tuned seed."""
    rows = []
    for cell in study["cells"]:
        run_id = study["run_ids"][cell.key]
        seeds = range(N_SEEDS) if cell.seed is None else [cell.seed]
        factors = {
            "model": cell.model,
            "condition": cell.condition,
            "language": cell.language,
            "group": cell.group,
            "role": cell.role,
            "family": cell.family,
            "run_id": run_id,
            "seedless": cell.seed is None,
        }
        rows += [{**record, **factors, "seed": seed} for seed in seeds for record in study["tables"][run_id]]
    return pd.DataFrame(rows)


def assert_same_items(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns[: len(ITEM_COLUMNS)]) == ITEM_COLUMNS
    assert set(actual.columns) == set(expected.columns)
    key = ["run_id", "seed", "question_id"]
    assert not actual.duplicated(key).any()
    actual = actual.sort_values(key).reset_index(drop=True)
    expected = expected.sort_values(key).reset_index(drop=True)[list(actual.columns)]
    # Everything compares exactly except the log-probs: MlflowClient.log_table writes floats with
    # pandas' to_json default of 10 decimal places, so that is what the server holds.
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, check_exact=False, rtol=0, atol=1e-10)


def test_load_items_returns_every_logged_item_through_paged_search(study, mlflow_server):
    assert study["n_runs"] == len(study["run_ids"]) == N_RUNS
    tracker = Tracker(mlflow_server.uri)
    tracker.search_page_size = PAGE
    pages = []
    search_runs = tracker.client.search_runs

    def counting(*args, **kwargs):  # the real server answers; this only records the page sizes
        page = search_runs(*args, **kwargs)
        pages.append((kwargs["max_results"], len(page)))
        return page

    tracker.client.search_runs = counting
    runs, items = load_items(tracker, experiment=EXPERIMENT)
    assert pages == [(PAGE, PAGE)] * (N_RUNS // PAGE) + [(PAGE, N_RUNS % PAGE)]
    assert len(runs) == N_RUNS and set(runs["run_id"]) == set(study["run_ids"].values())
    assert len(items) == N_MODELS * 6 * 3 * N_SEEDS * N_QUESTIONS
    assert_same_items(items, expected_items(study))


def test_parent_reads_the_same_items_as_the_experiment(study, mlflow_server):
    tracker = Tracker(mlflow_server.uri)
    _, by_experiment = load_items(tracker, experiment=EXPERIMENT)
    runs, by_parent = load_items(tracker, parent=study["parent_id"])
    assert len(runs) == N_RUNS
    assert_same_items(by_parent, expected_items(study))
    assert_same_items(by_experiment, expected_items(study))


def test_run_metadata_matches_tags_and_logged_accuracy(study, mlflow_server):
    runs, _ = load_items(Tracker(mlflow_server.uri), experiment=EXPERIMENT)
    by_run = runs.set_index("run_id")
    for cell in study["cells"]:
        run_id = study["run_ids"][cell.key]
        row = by_run.loc[run_id]
        assert (row["model"], row["condition"], row["language"], row["role"]) == (
            cell.model,
            cell.condition,
            cell.language,
            cell.role,
        )
        assert row["seed"] == ("" if cell.seed is None else str(cell.seed))
        correct = [r["correct"] for r in study["tables"][run_id]]
        assert row["logged_accuracy"] == pytest.approx(sum(correct) / len(correct))


def test_cli_compare_reads_only_the_given_tracking_uri(study, mlflow_server, tmp_path, monkeypatch):
    # No MLFLOW_TRACKING_URI and an empty working directory: only --tracking-uri can answer.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri, "--format", "csv", "--no-log"],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert len(table) == N_RUNS  # one row per run: seedless runs (baseline, cot) once, seed -1
    logged = {}
    for cell in study["cells"]:
        correct = [r["correct"] for r in study["tables"][study["run_ids"][cell.key]]]
        logged[(cell.model, -1 if cell.seed is None else cell.seed, cell.language, cell.condition)] = sum(
            correct
        ) / len(correct)
    for row in table.itertuples():
        assert math.isclose(row.accuracy, logged[(row.model, row.seed, row.language, row.condition)])
    assert not list(tmp_path.iterdir())  # nothing written locally (no mlflow.db, no mlruns)


def test_a_finished_run_without_its_table_is_named(mlflow_server):
    tracker = Tracker(mlflow_server.uri)
    experiment_id = tracker.experiment_id("compare-scale-missing-table")
    run_id = tracker.client.create_run(
        experiment_id, tags={f"{TAG}kind": "evaluate", f"{TAG}cell_key": "k"}
    ).info.run_id
    tracker.end(run_id)
    with pytest.raises(
        TrackingError, match=f"cannot read table 'predictions.json' of run {run_id} from {mlflow_server.uri}"
    ):
        load_items(tracker, experiment="compare-scale-missing-table")


def test_mixed_model_fits_whole_seeds_under_its_row_cap():
    from relxfer.compare.stats import mixed_model
    from tests.support.simulate import simulate_study

    items = simulate_study(n_models=2, n_questions=20, n_seeds=3, conditions=("baseline", "finetuned"), seed=3)
    per_seed = 2 * 6 * 20 * 2  # models x languages x questions x (baseline, finetuned)
    capped = mixed_model(items, "finetuned", max_rows=2 * per_seed + 1)
    assert capped.reason is None
    assert (capped.n_seeds, capped.n_seeds_available) == (2, 3)
    assert (capped.n_rows, capped.n_rows_available) == (2 * per_seed, 3 * per_seed)
    assert capped.note.startswith(f"Fitted on 2 of 3 seeds ({2 * per_seed:,} of {3 * per_seed:,} paired rows")
    assert "2 of 3 seeds" in capped.summary
    full = mixed_model(items, "finetuned", max_rows=None)
    assert (full.n_seeds, full.n_rows) == (3, 3 * per_seed) and "Fitted on" not in full.note


@pytest.fixture(scope="module")
def report_and_items(study, mlflow_server, tmp_path_factory):
    result = CliRunner().invoke(
        main,
        ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri, "--format", "json", "--no-log"],
    )
    assert result.exit_code == 0, result.output
    items = recompute.logged_items(MlflowClient(mlflow_server.uri), EXPERIMENT, tmp_path_factory.mktemp("tables"))
    return json.loads(result.stdout), items


def _close(actual: dict, expected: dict, keys) -> None:
    for key in keys:
        assert actual[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_every_accuracy_and_gain_is_recomputed_from_the_logged_tables(report_and_items):
    report, items = report_and_items
    expected = recompute.accuracy_rows(items).set_index(["model", "seed", "language", "condition"])
    assert len(report["accuracy"]) == len(expected) == N_RUNS
    for row in report["accuracy"]:
        want = expected.loc[(row["model"], row["seed"], row["language"], row["condition"])]
        _close(row, want, ["accuracy", "ci_low", "ci_high"])
        if row["condition"] == "cot":
            assert row["parse_failure_rate"] == pytest.approx(want["parse_failure_rate"])
        else:
            assert row["parse_failure_rate"] is None
    gains = pd.concat([recompute.gain_rows(items, c).assign(condition=c) for c in ("cot", "finetuned")])
    gains = gains.set_index(["model", "seed", "language", "condition"])
    assert len(report["gains"]) == len(gains) == N_MODELS * 6 * (1 + N_SEEDS)
    for row in report["gains"]:
        want = gains.loc[(row["model"], row["seed"], row["language"], row["condition"])]
        _close(row, want, ["gain", "ci_low", "ci_high", "p_value", "p_holm"])
        assert (row["b"], row["c"], row["verdict"]) == (want["b"], want["c"], want["verdict"])


def test_every_family_gap_and_slope_is_recomputed_from_the_logged_tables(report_and_items):
    report, items = report_and_items
    analyses = report["analyses"]
    for condition in ("cot", "finetuned"):
        gap, want = analyses[f"family_gap[{condition}]"], recompute.family_gap(items, condition)
        assert want["estimate"] == pytest.approx(want["fit_estimate"])
        _close(gap, want, ["estimate", "cr1_se", "se", "df", "ci_low", "ci_high", "p_value", "perm_p_value", "raw_gap"])
        assert gap["conclusion"] == want["conclusion"] and gap["scale"] == "raw" and gap["condition"] == condition
        slope, want = analyses[f"baseline_gain[{condition}]"], recompute.corrected_slope(items, condition)
        _close(
            slope,
            want,
            [
                "corrected_slope",
                "corrected_slope_se",
                "corrected_slope_ci_low",
                "corrected_slope_ci_high",
                "detectable_slope",
                "baseline_reliability",
                "naive_slope",
            ],
        )
    _close(
        analyses["task_alignment"], recompute.alignment(items), ["pearson_r", "pearson_p", "spearman_rho", "spearman_p"]
    )
    # Every summary names its analysis, condition, reference and scale.
    for summary in report["summaries"]:
        assert {"analysis", "condition", "reference", "scale", "summary"} <= summary.keys()
        assert summary["summary"].startswith(summary["condition"])
