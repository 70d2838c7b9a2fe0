"""Fine-tune checkpoints kept in the run's artifacts, so a retry on any machine resumes.

The trainer writes `checkpoints/step-<N>/` under its working directory (relxfer.train) and
calls back once a checkpoint is complete on disk. `CheckpointMirror.upload` then copies it to
the run's artifacts under the same name, every file but `state.json` first and `state.json`
last, so a checkpoint counts as present only once all of it is there, and deletes the ones it
supersedes. A distributed trainer keeps training while its launcher uploads, and deletes old
checkpoints as it writes new ones: the upload works from a snapshot of hard links (the files
outlive the trainer's deletion), and a checkpoint already deleted before the snapshot is skipped
(a newer one, whose upload follows, superseded it). `restore` downloads the newest complete one into a fresh working directory before
training starts; `clear` removes them all once the adapter is logged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from relxfer.tracking.client import Tracker

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"  # written last: its presence marks a complete checkpoint


class CheckpointMirror:
    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker = tracker
        self.run_id = run_id

    def _stored(self) -> dict[int, bool]:
        """step -> complete, for every checkpoint directory in the run's artifacts."""
        stored = {}
        for path, is_dir in self.tracker.list_artifacts(self.run_id, CHECKPOINTS):
            name = path.rsplit("/", 1)[-1]
            if is_dir and name.startswith("step-") and name[5:].isdigit():
                files = self.tracker.list_artifacts(self.run_id, path)
                stored[int(name[5:])] = any(p.rsplit("/", 1)[-1] == STATE_FILE for p, _ in files)
        return stored

    def upload(self, step: int, directory: Path) -> None:
        snapshot = Path(tempfile.mkdtemp(prefix=".upload-", dir=directory.parent.parent))
        try:
            try:
                shutil.copytree(directory, snapshot / directory.name, copy_function=os.link)
            except (FileNotFoundError, shutil.Error):
                return  # deleted by the trainer while we were behind: superseded
            self._upload(step, snapshot / directory.name)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _upload(self, step: int, directory: Path) -> None:
        target = f"{CHECKPOINTS}/step-{step}"
        for entry in sorted(directory.iterdir()):
            if entry.name == STATE_FILE:
                continue
            if entry.is_dir():
                self.tracker.log_artifacts(self.run_id, entry, f"{target}/{entry.name}")
            else:
                self.tracker.log_artifact(self.run_id, entry, target)
        self.tracker.log_artifact(self.run_id, directory / STATE_FILE, target)
        for old in self._stored():
            if old != step:
                self.tracker.delete_artifacts(self.run_id, f"{CHECKPOINTS}/step-{old}")

    def has_checkpoint(self) -> bool:
        """Whether the run holds a complete checkpoint to resume from."""
        return any(self._stored().values())

    def restore(self, work_dir: Path) -> int:
        """Download the newest complete checkpoint into `work_dir/checkpoints/`; its step (0: none)."""
        complete = [step for step, ok in self._stored().items() if ok]
        if not complete:
            return 0
        step = max(complete)
        final = work_dir / CHECKPOINTS / f"step-{step}"
        final.parent.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=".download-", dir=final.parent))
        try:
            self.tracker.download(self.run_id, f"{CHECKPOINTS}/step-{step}", private).rename(final)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return step

    def clear(self) -> None:
        if self.tracker.list_artifacts(self.run_id, CHECKPOINTS):
            self.tracker.delete_artifacts(self.run_id, CHECKPOINTS)
