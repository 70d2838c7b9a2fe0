"""Run a spec: record its parent run, execute every cell whose key has no FINISHED run yet (all of
them with `force`), one child run per cell.

What makes it lose nothing:
- A cell's run is marked FINISHED only after its metrics, table and artifacts are written; a
  cell that raises is marked FAILED and the error is re-raised, so a re-run picks up exactly
  the cells still missing.
- Before a cell runs, the runner claims it (relxfer.claims: an flock the kernel drops when the
  holder dies) and looks again at the tracking server: a second `relxfer run` of the same spec
  skips cells another process holds and comes back to them at the end.
- Runs left RUNNING by a killed process are marked KILLED; a fine-tune is resumed from its last
  checkpoint inside its old run, logging only the steps that run does not have yet, so its loss
  curve has no duplicated or missing steps.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .backends.base import Adapter
from .claims import CellClaims
from .data.study import StudyData, load_study_data
from .engines import EngineContext, evaluation_engine, trainer
from .errors import RelxferError
from .evaluate import evaluate_items
from .plan import COT_CONDITIONS, Cell, plan
from .prompts import PromptBuilder
from .spec import Spec
from .trainers.base import TrainRequest
from .tracking import CELLS_TABLE, TAG, UNFINISHED, ParentRun, Tracker

Report = Callable[[str], None]


@dataclass
class CellOutcome:
    cell: Cell
    run_id: str
    status: str  # "FINISHED" (ran now), "SKIPPED" (a FINISHED run with this key exists), "FAILED"
    metrics: dict = field(default_factory=dict)


def cell_tags(spec: Spec, cell: Cell, builder: PromptBuilder) -> dict[str, str]:
    model = spec.model(cell.model)
    tags = {
        f"{TAG}kind": cell.kind,
        f"{TAG}model": cell.model,
        f"{TAG}model_source": model["source"],
        f"{TAG}model_revision": model["revision"] or "",
        f"{TAG}architecture": model["architecture"],
        f"{TAG}cell_key": cell.key,
        f"{TAG}spec_hash": spec.hash,
        f"{TAG}spec_name": spec.name,
        f"{TAG}template": builder.template_id,
        f"{TAG}seed": "" if cell.seed is None else str(cell.seed),
    }
    if cell.kind == "evaluate":
        tags |= {
            f"{TAG}condition": cell.condition,
            f"{TAG}language": cell.language,
            f"{TAG}group": cell.group,
            f"{TAG}role": cell.role,
            f"{TAG}family": cell.family,
        }
    return tags


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out |= _flatten(f"{prefix}.{k}" if prefix else k, v)
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def check_writable(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".relxfer-write-check-"):
            pass
    except OSError as e:
        raise RelxferError(f"{what} {directory} is not writable ({e.strerror or e}); choose another with --cache-dir") from None


class StudyRunner:
    def __init__(self, spec: Spec, tracker: Tracker, cache_dir: Path, report: Report = lambda _: None, progress: bool = True):
        self.spec = spec
        self.tracker = tracker
        self.cache_dir = cache_dir
        self.report = report
        self.progress = progress
        self.builder = PromptBuilder.from_spec(spec.prompt)
        self.outcomes: list[CellOutcome] = []
        self.force = False

    # --- the study -------------------------------------------------------------------------

    def preflight(self) -> StudyData:
        """Everything that can be checked before a run exists: a problem here runs nothing."""
        from .models.loading import check_source

        check_writable(self.cache_dir, "cache directory")
        for model in self.spec.models:
            check_source(model)
            context = self._engine_context(model["name"])
            evaluation_engine(context).check()
            if self.spec.finetune is not None:
                trainer(context).check()
        return load_study_data(self.spec)

    def run(self, force: bool = False) -> list[CellOutcome]:
        self.force = force
        data = self.preflight()
        cells = plan(self.spec)
        self.claims = CellClaims(self.cache_dir)
        parent = self.tracker.start_parent(
            self.spec.experiment,
            run_name=self.spec.name,
            tags={f"{TAG}kind": "study", f"{TAG}spec_hash": self.spec.hash, f"{TAG}spec_name": self.spec.name},
        )
        self._log_study_inputs(parent, data)
        finished = {} if force else self.tracker.finished_cells(parent.experiment_id)
        self.report(f"parent run {parent.run_id}: {len(cells)} cells, {sum(c.key in finished for c in cells)} already finished")
        status = "FAILED"
        try:
            for model in self.spec.models:
                self._run_model(parent, data, [c for c in cells if c.model == model["name"]], finished)
            status = "FINISHED"
        finally:
            try:
                self.tracker.log_table(parent.run_id, [self._cell_row(o) for o in self.outcomes], CELLS_TABLE)
                if not parent.adopted:
                    self.tracker.end(parent.run_id, status)
            except RelxferError as e:
                # The server went away: keep the error that stopped the study, report this one.
                self.report(f"could not close the parent run: {e}")
        return self.outcomes

    def _log_study_inputs(self, parent: ParentRun, data: StudyData) -> None:
        self.tracker.log_artifact(parent.run_id, self.spec.path, "spec")
        self.tracker.log_dict(parent.run_id, self.spec.raw, "spec/resolved.json")
        self.tracker.log_dict(parent.run_id, {"held_out_ids": data.held_out_ids}, "data/held_out_ids.json")
        self.tracker.log_params(parent.run_id, {"spec_name": self.spec.name, "spec_hash": self.spec.hash, "data_source": data.source})
        self.tracker.log_metrics(parent.run_id, {"n_train_items": len(data.train_items), "n_held_out_ids": len(data.held_out_ids)})
        self.tracker.log_dataset(parent.run_id, "train", data.train_digest, data.source, "train")

    def _cell_row(self, outcome: CellOutcome) -> dict:
        c = outcome.cell
        return {"key": c.key, "kind": c.kind, "model": c.model, "condition": c.condition or "", "language": c.language or "",
                "seed": -1 if c.seed is None else c.seed, "run_id": outcome.run_id, "status": outcome.status}

    # --- one model: its fine-tunes, then its evaluations grouped by adapter ------------------

    def _run_model(self, parent: ParentRun, data: StudyData, cells: list[Cell], finished: dict[str, str]) -> None:
        finetune_runs: dict[str, str] = {}
        finetunes = [c for c in cells if c.kind == "finetune"]
        for cell in self._in_claim_order(finetunes, finished):
            finetune_runs[cell.key] = self._claimed(parent, cell, finished, lambda c, orphans: self._run_finetune(parent, data, c, orphans))
        finetune_runs |= {c.key: finished[c.key] for c in finetunes if c.key not in finetune_runs}
        evaluations = [c for c in cells if c.kind == "evaluate"]
        if not evaluations:
            return
        # Evaluations grouped by adapter, so each adapter is loaded once. The engine starts on
        # its first backend (nothing starts when every cell is finished) and is closed when the
        # model's cells are done, whatever ends them.
        engine = evaluation_engine(self._engine_context(cells[0].model))

        def evaluate(cell: Cell, orphans: list) -> str:
            adapter = None
            if cell.finetune_key:
                run_id = finetune_runs[cell.finetune_key]
                adapter = Adapter(cell.finetune_key, self._fetch_adapter(run_id, cell.finetune_key), run_id)
            return self._run_evaluation(parent, data, cell, engine, adapter, orphans)

        try:
            for cell in self._in_claim_order(sorted(evaluations, key=lambda c: c.finetune_key or ""), finished):
                self._claimed(parent, cell, finished, evaluate)
        finally:
            try:
                for artifact_path, file in engine.log_files().items():
                    self.tracker.log_artifact(parent.run_id, file, artifact_path)
            finally:
                engine.close()

    def _engine_context(self, model_name: str) -> EngineContext:
        return EngineContext(self.spec.model(model_name), self.spec, self.cache_dir, self.report, self.progress)

    def _in_claim_order(self, cells: list[Cell], finished: dict[str, str]):
        """Yield each cell to run: first every cell no other process holds, then (waiting for
        their claims) the ones that were held. Cells already finished are reported and skipped."""
        deferred = []
        for cell in cells:
            if cell.key in finished:
                self._skip(cell, finished[cell.key])
            elif self._claim_is_free(cell):
                yield cell
            else:
                self.report(f"busy  {cell.run_name}: another process holds it; coming back to it")
                deferred.append(cell)
        yield from deferred

    def _claim_is_free(self, cell: Cell) -> bool:
        with self.claims.claim(cell.key, wait=False) as got:
            return got

    def _claimed(self, parent: ParentRun, cell: Cell, finished: dict[str, str], work: Callable[[Cell, list], str]) -> str:
        """Run `cell` while holding its claim, unless a FINISHED run of it appeared meanwhile."""
        with self.claims.claim(cell.key, wait=True):
            runs = self.tracker.cell_runs(parent.experiment_id, cell.key)
            done = [r for r in runs if r.info.status == "FINISHED"]
            if done and not self.force:
                finished[cell.key] = done[-1].info.run_id
                self._skip(cell, done[-1].info.run_id)
                return done[-1].info.run_id
            # Holding the claim, any RUNNING run of this cell was left by a killed process.
            return work(cell, [r for r in runs if r.info.status in UNFINISHED])

    def _skip(self, cell: Cell, run_id: str) -> None:
        self.outcomes.append(CellOutcome(cell, run_id, "SKIPPED"))
        self.report(f"skip  {cell.run_name} (finished run {run_id})")

    def _chat_renderer(self, model: dict):
        """The model's chat template as a text -> text function, from its tokenizer alone."""
        from functools import partial

        from .backends.local import default_add_bos_token, render_chat
        from .models.loading import load_tokenizer

        return partial(render_chat, load_tokenizer(model, self.cache_dir), add_bos_token=default_add_bos_token(), name=model["name"])

    def _fetch_adapter(self, finetune_run_id: str, finetune_key: str) -> Path:
        """The adapter as the tracking server stores it, not a local path only the trainer knew.
        Downloaded into a private directory and renamed into place, so a second process reading
        the same adapter never sees a half-written copy."""
        final = self.cache_dir / "adapters" / finetune_key / finetune_run_id
        if not final.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            private = Path(tempfile.mkdtemp(prefix=".download-", dir=final.parent))
            downloaded = self.tracker.download(finetune_run_id, "adapter", private)
            try:
                downloaded.rename(final)
            except OSError:  # another process put its complete copy there first
                pass
            shutil.rmtree(private, ignore_errors=True)
        return final

    def _start_cell_run(self, parent: ParentRun, cell: Cell, orphans: list, resume: bool) -> str:
        """A run for `cell`: the newest orphaned run when resuming (fine-tunes), a new run
        otherwise. Orphans not resumed are marked KILLED so only one run can end FINISHED."""
        if resume and orphans:
            run_id = orphans[-1].info.run_id
            self.tracker.reopen(run_id)
            self.tracker.set_tags(run_id, {"mlflow.parentRunId": parent.run_id, f"{TAG}resumed": "true"})
            orphans = orphans[:-1]
        else:
            run_id = self.tracker.start_child(parent, cell.run_name, cell_tags(self.spec, cell, self.builder))
        for orphan in orphans:
            if orphan.info.status != "KILLED":
                self.tracker.end(orphan.info.run_id, "KILLED")
        return run_id

    def _in_cell_run(self, parent: ParentRun, cell: Cell, orphans: list, work: Callable[[str], dict], resume: bool = False) -> str:
        run_id = self._start_cell_run(parent, cell, orphans, resume)
        try:
            metrics = work(run_id)
        except BaseException:
            self.outcomes.append(CellOutcome(cell, run_id, "FAILED"))
            try:
                self.tracker.end(run_id, "FAILED")
            except RelxferError:
                pass  # the server is gone; the run stays RUNNING and the re-run marks it KILLED
            raise
        self.tracker.end(run_id, "FINISHED")
        self.outcomes.append(CellOutcome(cell, run_id, "FINISHED", metrics))
        return run_id

    def _run_finetune(self, parent: ParentRun, data: StudyData, cell: Cell, orphans: list) -> str:
        engine = trainer(self._engine_context(cell.model))

        def work(run_id: str) -> dict:
            model = self.spec.model(cell.model)
            logged = self.tracker.last_step(run_id, "train_loss")
            self.tracker.set_tags(run_id, {TAG + k: v for k, v in engine.run_tags().items()})
            if logged == 0:
                self.tracker.log_params(run_id, _flatten("finetune", self.spec.finetune) | {"model_source": model["source"]})
                self.tracker.log_dataset(run_id, "train", data.train_digest, data.source, "train")
            chat = self._chat_renderer(model) if self.spec.prompt["chat_template"] else None
            examples = [self.builder.training_example(item, chat=chat) for item in data.train_items]
            self.report(f"train {cell.run_name}: {len(examples)} examples" + (f", resuming after step {logged}" if logged else ""))

            def on_step(step: int, metrics: dict) -> None:
                # Text values are tags (e.g. where a service saved the state a re-run resumes from).
                tags = {TAG + k: v for k, v in metrics.items() if isinstance(v, str)}
                if tags:
                    self.tracker.set_tags(run_id, tags)
                # A resumed trainer repeats the steps after its last checkpoint; the run has them.
                numbers = {k: v for k, v in metrics.items() if not isinstance(v, str)}
                if step > logged and numbers:
                    self.tracker.log_metrics(run_id, numbers, step)

            request = TrainRequest(model, self.spec.finetune, examples, self.cache_dir / "finetune" / cell.key,
                                   cell.seed, self.cache_dir, self.progress)
            result = engine.train(request, on_step)
            summary = {
                "n_train_items": result.n_items,
                "steps": result.steps,
                "resumed_from_step": result.resumed_from_step,
                "final_loss": result.final_loss,
                "mean_tokens_per_s": result.tokens_per_s,
                "peak_memory_mb": result.peak_memory_mb,
            }
            self.tracker.log_metrics(run_id, summary, step=result.steps)
            self.tracker.log_artifacts(run_id, result.adapter_dir, "adapter")
            self.report(f"done  {cell.run_name}: final loss {result.final_loss:.3f} after {result.steps} steps")
            return summary

        return self._in_cell_run(parent, cell, orphans, work, resume=True)

    def _run_evaluation(self, parent: ParentRun, data: StudyData, cell: Cell, engine, adapter: Adapter | None,
                        orphans: list) -> str:
        def work(run_id: str) -> dict:
            backend = engine.backend(adapter)
            items = data.eval_items[cell.language]
            self.tracker.log_params(
                run_id,
                {"prompt_preset": self.spec.prompt["preset"], "labels": json.dumps(list(self.builder.labels)),
                 "template_id": self.builder.template_id, "condition": cell.condition}
                | (_flatten("cot", self.spec.cot) if cell.condition in COT_CONDITIONS else {}),
            )
            self.tracker.log_dataset(run_id, f"eval-{cell.language}", data.eval_digests[cell.language], data.source, "eval")
            result = evaluate_items(
                backend,
                items,
                self.builder,
                cot=self.spec.cot if cell.condition in COT_CONDITIONS else None,
                batch_size=self.spec.evaluation["batch_size"],
                progress=self.progress,
            )
            # After the evaluation: an engine may learn what it records only on the first prompts.
            self.tracker.set_tags(run_id, {TAG + k: v for k, v in engine.run_tags().items()})
            self.tracker.log_table(run_id, result.records)
            self.tracker.log_metrics(run_id, result.metrics)
            m = result.metrics
            self.report(f"done  {cell.run_name}: accuracy {m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] n={m['n_items']}")
            return result.metrics

        return self._in_cell_run(parent, cell, orphans, work)
