"""What the Ray driver records for a cell whose task it cancelled. The cancel races the cell: the
cell may have ended on its own first (finished, or failed in its own right), and then it counts
as what its run says, not as cancelled. The race is laid out here in a store, run by run, so
every way it can go is checked (the end-to-end fail-fast test sees only the way it went)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relxfer.plan.cells import plan
from relxfer.plan.study_data import load_study_data
from relxfer.run.cell import FAILED, FINISHED, NOT_RUN, CellOutcome, StudyContext
from relxfer.run.executors.ray_schedule import Schedule
from relxfer.spec.load import load_spec
from relxfer.tracking.client import TAG, Tracker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def test_a_cancelled_cell_counts_as_what_its_run_ended_as(tmp_path):
    spec = load_spec(REPO / "specs" / "smoke.json")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    study = tracker.open_study("cancelled-cells")
    parent = tracker.start_parent(study, "study", {}, {})
    other_parent = tracker.start_parent(study, "an earlier study", {}, {})
    context = StudyContext(spec, tracker, parent, load_study_data(spec), tmp_path / "cache", fail_fast=True)
    finished, failed, killed, not_started, elsewhere = [c for c in plan(spec) if c.kind == "evaluate"][:5]

    def run_of(cell, under, status):
        run_id = tracker.start_child(under, cell.run_name, {f"{TAG}cell_key": cell.key})
        if status == FINISHED:
            tracker.log_metrics(run_id, {"accuracy": 0.5})
        if status == FAILED:
            tracker.record_failure(run_id, "out of memory: asked for 512 GB", "Traceback ...")
        tracker.end(run_id, status)
        return run_id

    finished_id = run_of(finished, parent, FINISHED)
    failed_id = run_of(failed, parent, FAILED)
    run_of(killed, parent, "KILLED")
    run_of(elsewhere, other_parent, FINISHED)  # a run of another study's parent is not this one's outcome

    schedule = Schedule(context, uri, None, [])
    became = {
        cell.run_name: schedule._ended_before_cancel(CellOutcome(cell, "", NOT_RUN, error="cancelled (stop)"))
        for cell in (finished, failed, killed, not_started, elsewhere)
    }
    assert (became[finished.run_name].status, became[finished.run_name].run_id) == (FINISHED, finished_id)
    assert became[finished.run_name].metrics == {"accuracy": 0.5}
    outcome = became[failed.run_name]
    assert (outcome.status, outcome.run_id, outcome.error) == (FAILED, failed_id, "out of memory: asked for 512 GB")
    assert became[killed.run_name] is None and became[not_started.run_name] is None
    assert became[elsewhere.run_name] is None
