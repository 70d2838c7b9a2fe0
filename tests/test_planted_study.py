"""The whole pipeline in seconds: the smoke spec is validated, planned, run by `relxfer run` and
read back by `relxfer compare` through a sqlite tracking store, with the planted engines of
tests/support/fake_engine.py behind the `local` kind (no model, no server). Everything between
the spec and the report is the product's own code: cell keys, child runs, the adapter's round
trip through the store, per-item tables, the statistics. The engines plant a transfer (related
languages go from 30% to 90% with the adapter, controls stay at 30%): compare must find it by the
smoke study's own criteria, and its accuracies must be the logged tables'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec
from tests.smoke_study import findings, smoke_failures, write_variant
from tests.support.fake_engine import BASE_ACCURACY, PLANTED_ADAPTER, TRAINED_ACCURACY, planted_engines

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "planted-study"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(spec path, tracking URI, what `relxfer run` printed) after one run of the smoke spec."""
    root = tmp_path_factory.mktemp("planted-study")
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())
    raw["experiment"] = EXPERIMENT
    spec = write_variant(raw, root / "smoke.json")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # a sqlite store keeps artifacts in ./mlruns: here, not in the checkout
    try:
        with planted_engines():
            result = CliRunner().invoke(
                main, ["run", str(spec), "--tracking-uri", uri, "--cache-dir", str(root / "cache"), "--no-progress"]
            )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return spec, uri, result.output


def runs_by_kind(uri: str) -> dict[str, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    kinds: dict[str, list] = {}
    for run in runs:
        kinds.setdefault(run.data.tags.get("relxfer.kind", ""), []).append(run)
    return kinds


def test_every_planned_cell_has_one_finished_run_under_one_parent(study):
    spec_path, uri, _ = study
    cells = plan(load_spec(spec_path))
    kinds = runs_by_kind(uri)
    (parent,) = kinds["study"]
    children = kinds["finetune"] + kinds["evaluate"]
    assert sorted(r.data.tags["relxfer.cell_key"] for r in children) == sorted(c.key for c in cells)
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["relxfer.engine"] for r in children} == {"planted"}


def test_the_adapter_reaches_evaluation_through_the_tracking_store(study, tmp_path):
    _, uri, _ = study
    client = MlflowClient(uri)
    (finetune,) = runs_by_kind(uri)["finetune"]
    adapter = Path(client.download_artifacts(finetune.info.run_id, f"adapter/{PLANTED_ADAPTER}", str(tmp_path)))
    assert json.loads(adapter.read_text())["accuracy"] == TRAINED_ACCURACY
    losses = client.get_metric_history(finetune.info.run_id, "train_loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3]
    by_condition: dict[tuple[str, str], float] = {}
    for run in runs_by_kind(uri)["evaluate"]:
        tags = run.data.tags
        by_condition[(tags["relxfer.condition"], tags["relxfer.role"])] = max(
            by_condition.get((tags["relxfer.condition"], tags["relxfer.role"]), 0.0), run.data.metrics["accuracy"]
        )
    # Only the fine-tuned related cells saw the adapter's 90%; every other cell is near 30%.
    assert by_condition[("finetuned", "related")] > TRAINED_ACCURACY - 0.15
    for key in [("baseline", "related"), ("baseline", "control"), ("cot", "related"), ("finetuned", "control")]:
        assert by_condition[key] < BASE_ACCURACY + 0.2, key


def test_compare_finds_the_planted_transfer_and_reports_the_logged_accuracies(study, tmp_path):
    _, uri, _ = study
    args = ["compare", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--format", "json", "--no-log"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert smoke_failures(findings(report)) == []
    client = MlflowClient(uri)
    runs = {
        (r.data.tags["relxfer.condition"], r.data.tags["relxfer.language"]): r for r in runs_by_kind(uri)["evaluate"]
    }
    assert len(report["accuracy"]) == len(runs)
    for row in report["accuracy"]:
        run = runs[(row["condition"], row["language"])]
        path = client.download_artifacts(run.info.run_id, "predictions.json", str(tmp_path / run.info.run_id))
        table = json.loads(Path(path).read_text())
        correct = [r[table["columns"].index("correct")] for r in table["data"]]
        assert row["accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
        assert row["n_items"] == len(correct) == run.data.metrics["n_items"]


def test_a_second_run_of_the_same_spec_runs_nothing(study, tmp_path):
    spec_path, uri, _ = study
    before = sum(len(runs) for runs in runs_by_kind(uri).values())
    with planted_engines():
        result = CliRunner().invoke(
            main, ["run", str(spec_path), "--tracking-uri", uri, "--cache-dir", str(tmp_path), "--no-progress"]
        )
    assert result.exit_code == 0, result.output
    assert "nothing to run" in result.output
    kinds = runs_by_kind(uri)
    assert sum(len(runs) for k, runs in kinds.items() if k != "rerun") == before


def test_plan_estimates_its_assumptions_from_the_study_as_a_pilot(study):
    """`relxfer plan --from-experiment` reads the finished study back from the store: its baseline
    and mean gain are the logged accuracies' means, and the planted transfer (related languages
    gain, controls do not) shows as a large SD of gains between languages."""
    spec_path, uri, _ = study
    args = ["plan", str(spec_path), "--from-experiment", EXPERIMENT, "--tracking-uri", uri]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    accuracy = {
        (r.data.tags["relxfer.condition"], r.data.tags["relxfer.language"]): r.data.metrics["accuracy"]
        for r in runs_by_kind(uri)["evaluate"]
    }
    languages = sorted({language for _, language in accuracy})
    baseline = sum(accuracy[("baseline", lang)] for lang in languages) / len(languages)
    gain = sum(accuracy[("finetuned", lang)] - accuracy[("baseline", lang)] for lang in languages) / len(languages)
    (line,) = [line for line in result.output.splitlines() if "estimated from experiment" in line]
    assert f"estimated from experiment '{EXPERIMENT}', 1 model(s) x {len(languages)} languages, finetuned" in line
    assert f"baseline {100 * baseline:.1f}".rstrip("0").rstrip(".") + "%" in line
    assert f"mean gain {100 * gain:.1f}".rstrip("0").rstrip(".") + " points" in line
    between = float(line.split("SD of gains between languages ")[1].split(",")[0])
    assert between > 20, line  # half the languages gain about 60 points, half none
