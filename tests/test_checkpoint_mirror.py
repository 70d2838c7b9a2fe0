"""Checkpoints mirrored to a run's artifacts on a real MLflow server: a distributed trainer keeps
training (and deleting old checkpoints) while its launcher uploads, so a checkpoint can vanish
before or during its upload; the mirror must skip it, never fail the fine-tune, and `restore`
must bring back the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from relxfer.tracking.checkpoint_mirror import CheckpointMirror
from relxfer.tracking.client import Tracker

pytestmark = pytest.mark.integration


def write_checkpoint(work: Path, step: int) -> Path:
    directory = work / "checkpoints" / f"step-{step}"
    (directory / "adapter").mkdir(parents=True)
    (directory / "adapter" / "weights.bin").write_bytes(os.urandom(64))
    (directory / "state.json").write_text(json.dumps({"step": step}))
    return directory


def new_mirror(uri: str) -> tuple[Tracker, str, CheckpointMirror]:
    """A fresh run on the server and the mirror of its checkpoints."""
    tracker = Tracker(uri)
    run_id = tracker.client.create_run(tracker.experiment_id("mirror-test")).info.run_id
    return tracker, run_id, CheckpointMirror(tracker, run_id)


def test_upload_supersede_skip_and_restore(mlflow_server, tmp_path):
    tracker, run_id, mirror = new_mirror(mlflow_server.uri)
    work = tmp_path / "work"

    mirror.upload(2, write_checkpoint(work, 2))
    fourth = write_checkpoint(work, 4)
    shutil.rmtree(work / "checkpoints" / "step-2")
    mirror.upload(4, fourth)
    assert {path for path, _ in tracker.list_artifacts(run_id, "checkpoints")} == {"checkpoints/step-4"}

    # Step 6 was written and deleted (step 8 superseded it) before the launcher read its event.
    gone = write_checkpoint(work, 6)
    shutil.rmtree(gone)
    mirror.upload(6, gone)
    assert {path for path, _ in tracker.list_artifacts(run_id, "checkpoints")} == {"checkpoints/step-4"}
    assert not list(work.glob(".upload-*")), "the snapshot is removed"

    fresh = tmp_path / "retry"
    assert mirror.restore(fresh) == 4
    restored = fresh / "checkpoints" / "step-4"
    assert (restored / "adapter" / "weights.bin").read_bytes() == (fourth / "adapter" / "weights.bin").read_bytes()
    assert json.loads((restored / "state.json").read_text()) == {"step": 4}

    mirror.clear()
    assert mirror.restore(tmp_path / "after-clear") == 0


def test_a_checkpoint_without_its_state_file_is_not_restored(mlflow_server, tmp_path):
    """state.json goes last: a checkpoint cut short before it counts as absent."""
    tracker, run_id, mirror = new_mirror(mlflow_server.uri)
    work = tmp_path / "work"
    mirror.upload(2, write_checkpoint(work, 2))
    partial = write_checkpoint(work, 4)
    tracker.log_artifacts(run_id, partial / "adapter", "checkpoints/step-4/adapter")  # no state.json
    assert mirror.restore(tmp_path / "retry") == 2
