"""Tracker behaviour against a real tracking server that the resilience tests rely on."""

from __future__ import annotations

import threading

from relxfer.tracking import Tracker


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
