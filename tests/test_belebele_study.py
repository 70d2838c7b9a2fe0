"""specs/belebele-local.json end to end on the tiny built-in model with real Belebele text from
../shared/data: every planned cell ends FINISHED, evaluation runs hold exactly the held-out ids,
and the held-out ids logged by the parent run never occur in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "belebele-local.json"

pytestmark = pytest.mark.system


def test_belebele_local_spec_runs_end_to_end(belebele_dir, relxfer_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("BELEBELE_DIR", str(belebele_dir))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(
        main, ["run", str(SPEC), "--tracking-uri", uri, "--cache-dir", str(relxfer_cache), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    cells = plan(load_spec(SPEC))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("belebele-local")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("relxfer.cell_key")]
    assert sorted(r.data.tags["relxfer.cell_key"] for r in children) == sorted(c.key for c in cells)
    assert {r.info.status for r in children} == {"FINISHED"}

    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study")
    held_out = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "data/held_out_ids.json", str(tmp_path))).read_text()
    )
    held_out = set(held_out["held_out_ids"])
    assert len(held_out) == 100 and parent.data.metrics["n_train_items"] == 200
    inputs = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    assert inputs["train"].tags[0].value == "train" and inputs["train"].dataset.digest

    for run in (r for r in children if r.data.tags["relxfer.kind"] == "evaluate"):
        path = client.download_artifacts(run.info.run_id, "predictions.json", str(tmp_path / run.info.run_id))
        table = json.loads(Path(path).read_text())
        ids = {row[table["columns"].index("question_id")] for row in table["data"]}
        assert ids == held_out, run.info.run_name
        assert {row[table["columns"].index("language")] for row in table["data"]} == {run.data.tags["relxfer.language"]}
