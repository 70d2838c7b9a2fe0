"""What a Ray worker runs: one fine-tune cell, or a batch of evaluation cells of one model and
one adapter on one evaluation engine opened in this worker and closed when the batch is done.

A worker needs nothing from the driver's disk: it rebuilds the study from the parent run
(`relxfer.run.cell.study_from_parent_run`: resolved spec and held-out ids are artifacts there;
the data come from the spec's source), once per worker process and study, and keeps its own
cache (built models, downloaded adapters, a fine-tune's working directory) under this node's
`$RELXFER_CACHE` (default `~/.cache/relxfer`). Fine-tune checkpoints and adapters come from the
tracking server, so a retry on any node resumes where the dead worker's last checkpoint was.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from relxfer.errors import TrackingError
from relxfer.plan.cells import Cell
from relxfer.run.cell import (
    FINISHED,
    NOT_RUN,
    SKIPPED,
    CellOutcome,
    CellRunner,
    StudyContext,
    attempt,
    study_from_parent_run,
)
from relxfer.run.ledger import finetune_failed
from relxfer.tracking.client import ParentRun

PACKAGES = ("ray",)  # the runs of a study on Ray record Ray's version (relxfer.provenance)
_studies: dict[str, StudyContext] = {}  # this worker process's study, by parent run id


def node_cache_dir() -> Path:
    return Path(os.environ.get("RELXFER_CACHE") or Path.home() / ".cache" / "relxfer").expanduser()


def _where() -> str:
    import ray

    return f"{ray.util.get_node_ip_address()} (pid {os.getpid()})"


def _runner(tracking_uri: str, parent: ParentRun, force: bool) -> CellRunner:
    study = _studies.get(parent.run_id)
    if study is None:
        _studies.clear()
        study = study_from_parent_run(tracking_uri, parent, node_cache_dir(), force, _where(), PACKAGES)
        _studies[parent.run_id] = study
    return CellRunner(study)


def finetune_cell(tracking_uri: str, parent: ParentRun, force: bool, cell: Cell) -> list[CellOutcome]:
    runner = _runner(tracking_uri, parent, force)
    attempt(runner, cell, lambda: runner.finetune(cell))
    return runner.outcomes


def _finetune_run(finetune) -> tuple[str | None, str]:
    """(run id, why not) from what the driver passed: a run id, or the fine-tune task's outcomes."""
    if finetune is None or isinstance(finetune, str):
        return finetune, ""
    done = [o for o in finetune if o.status in (FINISHED, SKIPPED)]
    if done:
        return done[-1].run_id, ""
    return None, finetune_failed(finetune[-1].error if finetune else "no outcome")


def evaluate_cells(tracking_uri: str, parent: ParentRun, force: bool, cells: list[Cell], finetune) -> list[CellOutcome]:
    """Evaluate `cells` (one model, one adapter) on one engine. A cell that fails is recorded
    and the next one runs; a tracking server that is gone stops the batch (its other cells are
    NOT_RUN)."""
    runner = _runner(tracking_uri, parent, force)
    finetune_run, why = _finetune_run(finetune)
    if cells[0].finetune_key and finetune_run is None:
        return [CellOutcome(c, "", NOT_RUN, where=runner.study.where, error=why) for c in cells]
    engine = runner.open_engine(cells[0].model)
    try:
        for i, cell in enumerate(cells):
            error = attempt(runner, cell, partial(runner.evaluate, cell, engine, finetune_run))
            if isinstance(error, TrackingError):
                runner.outcomes += [
                    CellOutcome(c, "", NOT_RUN, where=runner.study.where, error=f"the tracking server is gone: {error}")
                    for c in cells[i + 1 :]
                ]
                break
    finally:
        runner.close_engine(engine)
    return runner.outcomes
