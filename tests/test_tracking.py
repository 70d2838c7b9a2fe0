"""Tracker behaviour against a real tracking server that the resilience tests rely on."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient

from relxfer.tracking.client import Study, Tracker
from relxfer.tracking.study_view import DEFAULT_SETTINGS, file_rerun, parent_name

pytestmark = pytest.mark.integration


def test_processes_creating_one_experiment_at_once_share_it(mlflow_server):
    """Two `relxfer run` started together on a new experiment both create it; the loser of the
    race must use the winner's experiment instead of failing."""
    ids, errors = [], []
    barrier = threading.Barrier(6)

    def create():
        tracker = Tracker(mlflow_server.uri)
        barrier.wait()
        try:
            ids.append(tracker.experiment_id("created-concurrently"))
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(ids) == 6 and len(set(ids)) == 1


def test_studies_starting_together_on_one_experiment_all_record_what_they_share(mlflow_server):
    """Studies started together tag their shared experiment and register the same new data set at
    once: MLflow's SQL store lets concurrent first writes of one row collide on its unique key
    (4 writers collide in most rounds), and the loser must write again rather than fail."""
    errors = []
    for round_ in range(12):
        tracker = Tracker(mlflow_server.uri)
        study = Study(tracker.experiment_id(f"started-together-{round_}"))
        parents = [tracker.start_parent(study, f"study {w}", {}, {}).run_id for w in range(4)]
        barrier = threading.Barrier(4)

        def start(
            writer: int, experiment_id=study.experiment_id, parents=parents, barrier=barrier, digest=f"digest-{round_}"
        ):
            tracker = Tracker(mlflow_server.uri)
            barrier.wait()
            try:
                tracker.set_experiment_tags(experiment_id, {"relxfer.shared": "same", f"relxfer.writer{writer}": "own"})
                tracker.log_dataset(parents[writer], "train", digest, "belebele", "train")
            except Exception as e:  # noqa: BLE001 - the assertion below reports it
                errors.append(e)

        threads = [threading.Thread(target=start, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tags = tracker.experiment_tags(study.experiment_id)
        assert tags["relxfer.shared"] == "same" and all(tags[f"relxfer.writer{w}"] == "own" for w in range(4))
        for parent in parents:
            (used,) = tracker.client.get_run(parent).inputs.dataset_inputs
            assert used.dataset.digest == f"digest-{round_}"
    assert errors == []


def test_parent_started_by_mlflow_run_takes_the_spec_name_unless_given_one(mlflow_server):
    """Under `mlflow run` the parent run exists before relxfer starts: MLflow's generated name is
    replaced by the spec's name, a name the user gave (`--run-name`) is kept, and params MLflow
    logged already (its `cache_dir`) are not logged again."""
    client = MlflowClient(mlflow_server.uri)
    tracker = Tracker(mlflow_server.uri)
    experiment_id = tracker.experiment_id("adopted-parents")
    generated = client.create_run(experiment_id)
    named = client.create_run(experiment_id, run_name="baseline-check-2")
    client.log_param(named.info.run_id, "cache_dir", "'~/.cache/x'")
    for run, expected in ((generated, "smoke"), (named, "baseline-check-2")):
        study = Study(experiment_id, run.info.run_id, run.info.run_name)
        parent = tracker.start_parent(
            study, parent_name(study, "smoke"), {"relxfer.kind": "study"}, {"cache_dir": "/abs/cache"}
        )
        assert parent.adopted and client.get_run(parent.run_id).info.run_name == expected
    assert client.get_run(generated.info.run_id).data.params["cache_dir"] == "/abs/cache"
    assert client.get_run(named.info.run_id).data.params["cache_dir"] == "'~/.cache/x'"


def test_generated_names_are_told_from_given_ones():
    names = ["inquisitive-auk-377", "smoke", "my-study-1", "gemma-belebele", "run-42", None]
    assert [parent_name(Study("0", "run-id", name), "spec") for name in names] == [
        "spec",
        "smoke",
        "my-study-1",
        "gemma-belebele",
        "run-42",
        "spec",
    ]
    assert parent_name(Study("0"), "spec") == "spec"


def test_comparison_names_know_compare_defaults():
    """A comparison with `relxfer compare`'s defaults is named `compare` and shown on the parent."""
    import inspect

    from relxfer.cli import main
    from relxfer.compare.report import build_report

    options = {p.name: p.default for p in main.commands["compare"].params}
    signature = inspect.signature(build_report).parameters
    assert (
        DEFAULT_SETTINGS
        == {k: options[k] for k in DEFAULT_SETTINGS}
        == {k: signature[k].default for k in DEFAULT_SETTINGS}
    )


def test_reruns_with_nothing_to_run_leave_one_record_under_the_parent(mlflow_server):
    """Each `mlflow run` of a finished study starts a run relxfer cannot avoid: it is filed under
    the study's parent run, and replaces the record of the previous such re-run."""
    client = MlflowClient(mlflow_server.uri)
    tracker = Tracker(mlflow_server.uri)
    experiment_id = tracker.experiment_id("reruns")
    parent = client.create_run(experiment_id, run_name="smoke", tags={"relxfer.kind": "study"}).info.run_id
    client.set_terminated(parent)
    records = []
    for _ in range(2):
        adopted = client.create_run(experiment_id).info.run_id  # as `mlflow run` does
        file_rerun(tracker, Study(experiment_id, adopted), "smoke", {"relxfer.spec_hash": "abc"})
        client.set_terminated(adopted)  # as `mlflow run` does when relxfer returns
        records.append(client.get_run(adopted))
    assert [(r.info.run_name, r.data.tags["mlflow.parentRunId"]) for r in records] == [
        ("smoke (nothing to run)", parent)
    ] * 2
    assert [client.get_run(r.info.run_id).info.lifecycle_stage for r in records] == ["deleted", "active"]
    assert [r.data.tags["relxfer.spec_hash"] for r in records] == ["abc"] * 2
