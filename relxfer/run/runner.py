"""Run a spec: check everything that can be checked, record the spec's parent run, and hand the
cells whose key has no FINISHED run yet (all of them with `force`) to an executor: `local` (one
after another in this process, the default) or `ray` (tasks on a cluster). Whichever runs
them, each cell goes through `relxfer.run.cell.CellRunner`, one child run per cell, so the
MLflow layout does not depend on the executor. A cell that fails does not stop the others
(relxfer.run.ledger; `fail_fast` stops at the first failure). At the end the parent run gets the
`cells.json` table (cell key -> run, status, why a cell failed or did not run) and ends
FINISHED, or FAILED when any cell failed or did not run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from relxfer.errors import RelxferError, SpecError
from relxfer.plan.cells import plan
from relxfer.plan.study_data import StudyData, load_study_data
from relxfer.run.cell import (
    FAILED,
    FINISHED,
    HELD_OUT_IDS,
    NOT_RUN,
    RESOLVED_SPEC,
    SKIPPED,
    CellOutcome,
    StudyContext,
    run_provenance,
)
from relxfer.spec.engines import EngineContext, evaluation_engine, trainer
from relxfer.spec.types import Spec, chat_settings
from relxfer.tracking.client import CELLS_TABLE, TAG, ParentRun, Tracker
from relxfer.tracking.study_view import (
    NOTE_TAG,
    describe_experiment,
    file_rerun,
    parent_name,
    study_note,
)

Report = Callable[[str], None]


def check_writable(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".relxfer-write-check-"):
            pass
    except OSError as e:
        raise RelxferError(
            f"{what} {directory} is not writable ({e.strerror or e}); choose another with --cache-dir"
        ) from None


def check_prompt_format(spec: Spec, index: int, cache_dir: Path) -> None:
    """Refuse a chat-template format model `index` cannot render (an argument its template does
    not read, an answer prefix its tokenizer cannot encode, a template that cannot continue a
    final assistant message), naming the spec file and the setting's JSON path."""
    model = spec.models[index]
    settings = chat_settings(spec.chat_template(model))
    if settings is None:
        return
    from relxfer.models.chat_format import ChatFormat
    from relxfer.models.loading import load_tokenizer

    where = f"/models/{index}/chat_template" if model.chat_template is not None else "/prompt/chat_template"
    tokenizer = load_tokenizer(model, cache_dir)
    try:
        ChatFormat(tokenizer, settings.to_dict(), name=model.name).check(where)
    except SpecError as exc:
        raise SpecError(f"{spec.path}: {exc}") from None


class StudyRunner:
    def __init__(
        self,
        spec: Spec,
        tracker: Tracker,
        cache_dir: Path,
        report: Report = lambda _: None,
        progress: bool = True,
        executor=None,
    ):
        from relxfer.run.executors.local import LocalExecutor

        self.spec = spec
        self.tracker = tracker
        self.cache_dir = cache_dir
        self.report = report
        self.progress = progress
        self.executor = executor if executor is not None else LocalExecutor()
        self.outcomes: list[CellOutcome] = []
        self.parent: ParentRun | None = None  # the parent run of the last `run` (None: nothing ran)

    def preflight(self) -> StudyData:
        """Everything that can be checked before a run exists: a problem here runs nothing."""
        from relxfer.models.loading import check_source

        check_writable(self.cache_dir, "cache directory")
        for index, model in enumerate(self.spec.models):
            check_source(model)
            check_prompt_format(self.spec, index, self.cache_dir)
            context = EngineContext(model, self.spec, self.cache_dir, self.report, self.progress)
            evaluation_engine(context).check()
            if self.spec.finetune is not None:
                trainer(context).check()
        data = load_study_data(self.spec)
        self.executor.check(self.spec, self.tracker)
        return data

    def _study_tags(self) -> dict[str, str]:
        """What a study's runs were made with: the spec and the provenance of this process."""
        return {
            f"{TAG}spec_hash": self.spec.hash,
            f"{TAG}spec_name": self.spec.name,
            **run_provenance(self.executor.packages),
        }

    def run(self, force: bool = False, fail_fast: bool = False) -> list[CellOutcome]:
        data = self.preflight()
        cells = plan(self.spec)
        target = self.tracker.open_study(self.spec.experiment)
        describe_experiment(self.tracker, target.experiment_id, self.spec)
        finished = {} if force else self.tracker.finished_cells(target.experiment_id)
        if all(c.key in finished for c in cells):  # nothing to run: no new parent run either
            file_rerun(self.tracker, target, self.spec.name, self._study_tags())
            self.outcomes = [CellOutcome(c, finished[c.key], SKIPPED) for c in cells]
            self.report(f"nothing to run: all {len(cells)} cells have a FINISHED run; no new parent run")
            return self.outcomes
        parent = self.tracker.start_parent(
            target,
            run_name=parent_name(target, self.spec.name),
            tags={f"{TAG}kind": "study", NOTE_TAG: study_note(self.spec), **self._study_tags()},
            params={"cache_dir": str(self.cache_dir)},
        )
        self.parent = parent
        self._log_study_inputs(parent, data)
        self.report(
            f"parent run {parent.run_id}: {len(cells)} cells, {sum(c.key in finished for c in cells)} already finished"
        )
        study = StudyContext(
            self.spec,
            self.tracker,
            parent,
            data,
            self.cache_dir,
            self.report,
            self.progress,
            force,
            fail_fast=fail_fast,
            packages=self.executor.packages,
        )
        status: str = FAILED  # the parent run's MLflow status
        try:
            self.executor.run(study, cells, finished, self.outcomes)
            if not any(o.status in (FAILED, NOT_RUN) for o in self.outcomes):
                status = FINISHED
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            try:
                self.tracker.log_table(parent.run_id, [self.cell_row(o) for o in self.outcomes], CELLS_TABLE)
                if not parent.adopted:
                    self.tracker.end(parent.run_id, status)
            except RelxferError as e:
                # The server went away: keep the error that stopped the study, report this one.
                self.report(f"could not close the parent run: {e}")
        return self.outcomes

    def _log_study_inputs(self, parent: ParentRun, data: StudyData) -> None:
        """The spec as written and as resolved, and the held-out ids: with them any machine can
        rebuild this study from the parent run alone (relxfer.run.cell.study_from_parent_run)."""
        self.tracker.log_artifact(parent.run_id, self.spec.path, "spec")
        self.tracker.log_dict(parent.run_id, self.spec.raw, RESOLVED_SPEC)
        self.tracker.log_dict(parent.run_id, {"held_out_ids": data.held_out_ids}, HELD_OUT_IDS)
        self.tracker.log_params(
            parent.run_id, {"spec_name": self.spec.name, "spec_hash": self.spec.hash, "data_source": data.source}
        )
        self.tracker.log_metrics(
            parent.run_id, {"n_train_items": len(data.train_items), "n_held_out_ids": len(data.held_out_ids)}
        )
        self.tracker.log_dataset(parent.run_id, "train", data.train_digest, data.source, "train")

    @staticmethod
    def cell_row(outcome: CellOutcome) -> dict:
        """A row of the parent run's cells.json table."""
        c = outcome.cell
        return {
            "key": c.key,
            "kind": c.kind,
            "model": c.model,
            "condition": str(c.condition or ""),
            "language": c.language or "",
            "seed": -1 if c.seed is None else c.seed,
            "run_id": outcome.run_id,
            "status": str(outcome.status),
            "where": outcome.where,
            "error": outcome.error,
        }
