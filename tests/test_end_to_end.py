"""The whole path against a real `mlflow server`: `mlflow run . -P spec=specs/smoke.json` creates one
parent run and one FINISHED child per planned cell; `relxfer compare` reads them back and every
accuracy it reports equals the accuracy recomputed from that run's per-item table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main
from relxfer.plan import count_by_kind, plan
from relxfer.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.json"
EXPERIMENT = "smoke-e2e"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_study(mlflow_server, relxfer_cache, tmp_path_factory):
    """Run the smoke spec once through `mlflow run`, as the README tells a user to."""
    workdir = tmp_path_factory.mktemp("mlflow-run")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    env.pop("MLFLOW_RUN_ID", None)
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    result = subprocess.run(
        [*mlflow_cli, "run", str(REPO), "-P", f"spec={SMOKE}", "-P", f"cache_dir={relxfer_cache}",
         "--env-manager", "local", "--experiment-name", EXPERIMENT],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, runs, result


def test_plan_counts_equal_finished_child_runs_under_one_parent(smoke_study):
    client, runs, _ = smoke_study
    parents = [r for r in runs if r.data.tags.get("relxfer.kind") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    counts = count_by_kind(plan(load_spec(SMOKE)))
    assert len(children) == counts["finetune"] + counts["evaluate"]
    assert {r.info.status for r in children} == {"FINISHED"}
    kinds = [r.data.tags["relxfer.kind"] for r in children]
    assert kinds.count("finetune") == counts["finetune"] and kinds.count("evaluate") == counts["evaluate"]
    # The spec file is an artifact of the parent run.
    assert "spec" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_cell_runs_carry_design_tags_metrics_and_tables(smoke_study):
    client, runs, _ = smoke_study
    evaluations = [r for r in runs if r.data.tags.get("relxfer.kind") == "evaluate"]
    for run in evaluations:
        tags = run.data.tags
        for factor in ("model", "condition", "language", "family", "group", "cell_key", "spec_hash", "template"):
            assert tags.get(f"relxfer.{factor}"), (factor, run.info.run_name)
        for metric in ("accuracy", "n_items", "ci_low", "ci_high", "items_per_s"):
            assert metric in run.data.metrics
        assert run.data.metrics["ci_low"] <= run.data.metrics["accuracy"] <= run.data.metrics["ci_high"]
        if tags["relxfer.condition"] == "cot":
            assert 0 <= run.data.metrics["parse_failure_rate"] <= 1
    finetune = next(r for r in runs if r.data.tags.get("relxfer.kind") == "finetune")
    losses = client.get_metric_history(finetune.info.run_id, "train_loss")
    assert len(losses) == finetune.data.metrics["steps"]
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == list(range(1, len(losses) + 1))
    assert "adapter" in {a.path for a in client.list_artifacts(finetune.info.run_id)}


def _table_accuracy(client: MlflowClient, run_id: str, tmp_path: Path) -> tuple[float, int]:
    """Accuracy recomputed from the run's per-item table file, read independently of relxfer."""
    path = client.download_artifacts(run_id, "predictions.json", str(tmp_path / run_id))
    table = json.loads(Path(path).read_text())
    correct_col = table["columns"].index("correct")
    pred_col, gold_col = table["columns"].index("predicted"), table["columns"].index("gold")
    rows = table["data"]
    assert all(row[correct_col] == int(row[pred_col] == row[gold_col]) for row in rows)
    return sum(row[correct_col] for row in rows) / len(rows), len(rows)


def test_compare_accuracies_equal_the_per_item_tables(smoke_study, mlflow_server, tmp_path):
    client, runs, _ = smoke_study
    result = CliRunner().invoke(
        main, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri, "--format", "json", "--no-log"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = report["accuracy"]
    evaluations = {
        (r.data.tags["relxfer.model"], r.data.tags["relxfer.condition"], r.data.tags["relxfer.language"]): r
        for r in runs if r.data.tags.get("relxfer.kind") == "evaluate"
    }
    assert len(rows) == len(evaluations)
    for row in rows:
        run = evaluations[(row["model"], row["condition"], row["language"])]
        accuracy, n = _table_accuracy(client, run.info.run_id, tmp_path)
        assert row["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert row["n_items"] == n == run.data.metrics["n_items"]
        assert run.data.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    # Gains are differences of the printed accuracies of the same model x language.
    by_cell = {(r["model"], r["language"], r["condition"]): r["accuracy"] for r in rows}
    for gain in report["gains"]:
        expected = by_cell[(gain["model"], gain["language"], gain["condition"])] - by_cell[(gain["model"], gain["language"], "baseline")]
        assert gain["gain"] == pytest.approx(expected, abs=1e-12)


def test_compare_prints_a_readable_table(smoke_study, mlflow_server):
    result = CliRunner().invoke(main, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri, "--no-log"])
    assert result.exit_code == 0, result.output
    assert "syn_Rela" in result.output and "finetuned" in result.output
    assert "family gap" in result.output.lower()


def test_rerun_skips_every_finished_cell(smoke_study, mlflow_server, relxfer_cache):
    client, runs, _ = smoke_study
    result = CliRunner().invoke(
        main, ["run", str(SMOKE), "--tracking-uri", mlflow_server.uri, "--cache-dir", str(relxfer_cache), "--no-progress"],
        env={"MLFLOW_EXPERIMENT_NAME": EXPERIMENT},
    )
    assert result.exit_code == 0, result.output
    cells = len(plan(load_spec(SMOKE)))
    assert f"0 cells run, {cells} already finished" in result.output
    experiment = client.get_experiment_by_name(EXPERIMENT)
    after = client.search_runs([experiment.experiment_id], max_results=1000)
    new = [r for r in after if r.info.run_id not in {x.info.run_id for x in runs}]
    assert [r.data.tags.get("relxfer.kind") for r in new] == ["study"]  # only the new parent
