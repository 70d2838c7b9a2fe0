"""Rank 0's reports on their way to the process that tracks the run.

The runner's `on_step` lives in the parent process (only relxfer.tracking.client talks to MLflow), while
a distributed fine-tune runs in worker processes. Rank 0 emits events; the launcher in the parent
feeds them to a `Relay`, which calls `on_step` / `on_checkpoint` once per step and keeps the
result. Events (plain JSON):

    {"event": "step", "step": N, "metrics": {...}}
    {"event": "checkpoint", "step": N, "path": "..."}
    {"event": "result", "result": {...}}           the TrainResult record
    {"event": "error", "message": "..."}           a relxfer error (bad input) on rank 0

torchrun's ranks write them as JSON lines to a file the parent tails (`JsonLinesSink`,
`JsonLinesTail`); Ray Train's workers put them on a Ray queue.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from relxfer.errors import ModelError
from relxfer.train.records import TrainResult, result_from_record


class JsonLinesSink:
    """Append events to a file, one line each, flushed at once (opened on the first event, so
    ranks that never emit never touch it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file: TextIO | None = None

    def __call__(self, event: dict) -> None:
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()


class JsonLinesTail:
    """New complete lines of a file another process appends to."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time, whole
        self.offset += end
        return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]


class Relay:
    """Calls `on_step` once per step, in order: a step repeated after a restart (torchrun's
    max_restarts, Ray's max_failures) resumes from a checkpoint and reports again what this
    relay already passed on; those repeats are dropped here."""

    def __init__(
        self,
        on_step: Callable[[int, dict], None] | None,
        on_checkpoint: Callable[[int, Path], None] | None = None,
        progress=None,
    ):
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint
        self.progress = progress  # a tqdm bar, or None
        self.last_step = 0
        self.result: TrainResult | None = None
        self.error: str | None = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "step":
            if event["step"] <= self.last_step:
                return
            if self.progress is not None:
                self.progress.update(max(0, event["step"] - self.progress.n))
                self.progress.set_postfix(loss=f"{event['metrics']['train_loss']:.4f}")
            self.last_step = event["step"]
            if self.on_step is not None:
                self.on_step(event["step"], event["metrics"])
        elif kind == "checkpoint" and self.on_checkpoint is not None:
            self.on_checkpoint(event["step"], Path(event["path"]))
        elif kind == "result":
            self.result = result_from_record(event["result"])
        elif kind == "error":
            self.error = event["message"]

    def final(self, what: str, detail: str) -> TrainResult:
        """The result, or one ModelError naming `what` failed and why."""
        if self.error is not None:
            raise ModelError(self.error)
        if self.result is None:
            raise ModelError(f"{what} ended without a result: {detail}")
        return self.result


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG), so a
    launcher killed with SIGKILL leaves no training processes behind. A no-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(1, int(sig))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
