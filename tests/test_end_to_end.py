"""The whole path against a real `mlflow server`: `mlflow run . -P spec=specs/smoke.json` creates one
parent run and one FINISHED child per planned cell; `relxfer compare` reads them back, every
accuracy it reports equals the accuracy recomputed from that run's per-item table, and it finds
the transfer effect the smoke study plants."""

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
from relxfer.plan.cells import count_by_kind, plan
from relxfer.spec.load import load_spec
from tests.smoke_study import findings, smoke_failures
from tests.support.provenance import assert_provenance

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.json"
EXPERIMENT = "smoke-e2e"

pytestmark = pytest.mark.system


def mlflow_run(server, workdir: Path, env: dict, *params: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, **env}
    env.pop("MLFLOW_RUN_ID", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-P",
            f"spec={SMOKE}",
            *params,
            "--env-manager",
            "local",
            "--experiment-name",
            EXPERIMENT,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def smoke_study(mlflow_server, relxfer_cache, tmp_path_factory):
    """Run the smoke spec once through `mlflow run`, as the README tells a user to."""
    # The cache directory comes from the environment, as relxfer's default: MLflow then logs no
    # `cache_dir` of its own and the parent's param is relxfer's, unquoted.
    result = mlflow_run(mlflow_server, tmp_path_factory.mktemp("mlflow-run"), {"RELXFER_CACHE": str(relxfer_cache)})
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
    # Each run says what made it (relxfer, its git state, package versions, the device).
    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study")
    for run in (parent, finetune, *evaluations):
        assert_provenance(run.data.tags)


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
        main,
        ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri, "--format", "json", "--no-log"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = report["accuracy"]
    evaluations = {
        (r.data.tags["relxfer.model"], r.data.tags["relxfer.condition"], r.data.tags["relxfer.language"]): r
        for r in runs
        if r.data.tags.get("relxfer.kind") == "evaluate"
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
        expected = (
            by_cell[(gain["model"], gain["language"], gain["condition"])]
            - by_cell[(gain["model"], gain["language"], "baseline")]
        )
        assert gain["gain"] == pytest.approx(expected, abs=1e-12)


def test_compare_prints_a_readable_table(smoke_study, mlflow_server):
    result = CliRunner().invoke(
        main, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri, "--no-log"]
    )
    assert result.exit_code == 0, result.output
    assert "syn_Rela" in result.output and "finetuned" in result.output
    assert "family gap" in result.output.lower()


def active_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_experiment_is_marked_for_model_training_and_described_by_the_spec(smoke_study):
    client, _, _ = smoke_study
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = experiment.tags["mlflow.note.content"]
    # MLflow 3.17 opens an experiment on its GenAI overview unless the browser chose otherwise:
    # the description's first words lead to the runs list.
    assert note.startswith(
        f"[Open the runs list](#/experiments/{experiment.experiment_id}/runs?workflowType="
        f"machine_learning) · **smoke**: {load_spec(SMOKE).raw['description']}"
    )
    assert (
        "- evaluated on: Synthetic-A (related): syn_Rela, syn_Relb, syn_Relc, syn_Reld, syn_Rele; Synthetic-B (control): "
        in note
    )


def test_parent_run_is_named_after_the_spec_under_mlflow_run(smoke_study, relxfer_cache):
    _, runs, _ = smoke_study
    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study")
    assert parent.info.run_name == "smoke"  # not MLflow's generated name
    assert parent.data.params["cache_dir"] == str(relxfer_cache)  # no shell quotes
    assert parent.data.params["spec"] == str(SMOKE)
    assert "**smoke**: " in parent.data.tags["mlflow.note.content"]


def test_design_factors_are_params_for_the_compare_runs_page(smoke_study):
    _, runs, _ = smoke_study
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if tags.get("relxfer.kind") == "evaluate":
            for factor in ("model", "condition", "language", "group", "role", "family"):
                assert params[factor] == tags[f"relxfer.{factor}"], (factor, run.info.run_name)
            assert params["seed"] == ("0" if tags["relxfer.condition"] == "finetuned" else "none")
            # Settings only some conditions have are tags: as params they would look like factors.
            assert not [k for k in params if k.startswith("cot.")]
            assert ("relxfer.cot.max_new_tokens" in tags) == (tags["relxfer.condition"] == "cot")
        elif tags.get("relxfer.kind") == "finetune":
            assert (params["model"], params["seed"]) == ("tiny", "0")


def test_the_main_job_finds_the_planted_transfer(smoke_study, mlflow_server, tmp_path):
    """The smoke study's criteria on the README's main job (seed 0): every related language gains
    at least 20 points (Holm p < 0.05), controls gain at least 15 points less on average, and the
    family gap's interval lies above 0 with a permutation p below 0.05; the printed report says so
    in words and the family-gap plot is written."""
    args = [
        "compare",
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        mlflow_server.uri,
        "--no-log",
        "--out",
        str(tmp_path),
    ]
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    found = findings(json.loads((tmp_path / "report.json").read_text()))
    assert len(found.related_gains) == len(found.control_gains) == 5
    assert smoke_failures(found) == [], found.gap_summary
    low, high = (f"{100 * x:+.1f}" for x in found.gap_ci)
    assert (
        f"related languages gained {100 * found.gap_estimate:.1f} points more than controls (95% CI {low} to {high} points): "
        f"a finding: related languages gained more (exact permutation p = {found.gap_perm_p:.3f})" in found.gap_summary
    )
    assert " ".join(found.gap_summary.split()) in " ".join(text.output.split())  # printed, wrapped
    assert (tmp_path / "family_gap_finetuned.png").stat().st_size > 0


def test_rerun_with_nothing_to_do_adds_no_run(smoke_study, mlflow_server, relxfer_cache, tmp_path):
    client, runs, _ = smoke_study
    before = {r.info.run_id for r in active_runs(client) if r.data.tags.get("relxfer.kind") != "compare"}
    result = CliRunner().invoke(
        main,
        ["run", str(SMOKE), "--tracking-uri", mlflow_server.uri, "--cache-dir", str(relxfer_cache), "--no-progress"],
        env={"MLFLOW_EXPERIMENT_NAME": EXPERIMENT},
    )
    assert result.exit_code == 0, result.output
    cells = len(plan(load_spec(SMOKE)))
    assert f"nothing to run: all {cells} cells have a FINISHED run; no new parent run" in result.output
    assert f"0 cells run, {cells} already finished" in result.output
    assert {r.info.run_id for r in active_runs(client) if r.data.tags.get("relxfer.kind") != "compare"} == before
    # `mlflow run` starts its run before relxfer can tell: relxfer files it under the study's
    # parent run, so the top level of the runs list stays as it was.
    mlflow_run(mlflow_server, tmp_path, {}, "-P", f"cache_dir={relxfer_cache}")
    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study")
    after = [r for r in active_runs(client) if r.data.tags.get("relxfer.kind") != "compare"]
    [rerun] = [r for r in after if r.info.run_id not in before]
    assert (rerun.info.run_name, rerun.info.status, rerun.data.tags["relxfer.kind"]) == (
        "smoke (nothing to run)",
        "FINISHED",
        "rerun",
    )
    assert rerun.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert rerun.data.tags["relxfer.spec_hash"] == parent.data.tags["relxfer.spec_hash"]
    assert_provenance(rerun.data.tags)  # what the re-run was made with, as on every other run
    assert rerun.data.params["cache_dir"] == str(relxfer_cache)  # `-P cache_dir=DIR` reached relxfer
    assert not [r for r in after if r.data.tags.get("mlflow.parentRunId") == rerun.info.run_id]


def compare(server, *args: str) -> str:
    result = CliRunner().invoke(main, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", server.uri, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_repeated_compare_keeps_one_comparison_run_under_the_parent(smoke_study, mlflow_server, tmp_path):
    client, runs, _ = smoke_study
    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study").info.run_id

    def comparisons():
        return [r for r in active_runs(client) if r.data.tags.get("relxfer.kind") == "compare"]

    assert f" under study run {parent}\n" in compare(mlflow_server)
    assert "is up to date (same runs, same settings)" in compare(mlflow_server)
    [first] = comparisons()
    assert (first.info.run_name, first.data.tags["mlflow.parentRunId"]) == ("compare", parent)
    assert_provenance(first.data.tags)
    # The study's answer is on its parent run: plots, headline numbers, summary and images.
    study = client.get_run(parent)
    plots = {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"plots/language_gains_finetuned.png", "plots/language_gains_cot.png"} <= plots
    assert study.data.metrics["family_gap_finetuned"] == first.data.metrics["family_gap_finetuned"]
    note = study.data.tags["mlflow.note.content"]
    assert note.startswith("<!-- relxfer compare -->\n### Result (compare)\n")  # the answer first
    assert f"(get-artifact?path=plots%2Flanguage_gains_finetuned.png&run_uuid={parent})" in note
    assert "**smoke**: " in note
    # ... the report's warnings, then each analysis's plain sentence, as in the comparison's report.json
    report = json.loads(
        Path(client.download_artifacts(first.info.run_id, "report/report.json", str(tmp_path))).read_text()
    )
    answer = [*report["warnings"], *(s["summary"] for s in report["summaries"])]
    assert answer and all(s["summary"] for s in report["summaries"])
    assert note.split("\n\n")[1] == "\n".join(f"- {line}" for line in answer)
    # Other runs to compare (new runs finished since) replace the comparison instead of adding one.
    client.set_tag(first.info.run_id, "relxfer.report_digest", "stale")
    assert f"under study run {parent}, replacing 1 older" in compare(mlflow_server)
    [second] = comparisons()
    assert second.info.run_id != first.info.run_id
    assert client.get_run(first.info.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(parent).data.tags["mlflow.note.content"].count("### Result (compare)") == 1
