"""One cell, on any machine: the code path every executor shares.

A cell needs its spec, the study's data, the spec's parent run and a tracking server; a
`StudyContext` holds them. The driver builds one from what it has in memory; a worker on
another machine builds the same from the parent run alone (`study_from_parent_run`: the resolved spec
and the held-out ids are artifacts of that run), so nothing travels through the driver's disk.

What makes a cell run exactly once, whoever runs it:
- Just before it runs, the cell looks at the tracking server again: a FINISHED run of its key
  (with `force`: one under this parent run) means it is done, whoever did it.
- The caller holds the cell's claim (a file lock, or the cluster's claim service), so any
  RUNNING run of the cell was left by a process that died: it is marked KILLED, or, for a
  fine-tune, resumed from its last checkpoint in the run's artifacts, logging only the steps
  the run does not have yet.
- A run is marked FINISHED only after its metrics, table and artifacts are written; a cell
  stopped from outside (Ctrl-C, a cancelled task) is marked KILLED; a cell that raises is marked FAILED, with why in words (the `relxfer.error` tag) and the traceback
  (`error.txt`), and the error is re-raised for the executor (`attempt`) to record.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from relxfer.data.prompts import PromptBuilder
from relxfer.errors import DataError, RelxferError, TrackingError
from relxfer.evaluate.base import Adapter
from relxfer.evaluate.loop import evaluate_items
from relxfer.plan.cells import Cell
from relxfer.plan.study_data import StudyData, load_study_data
from relxfer.provenance import provenance_tags
from relxfer.run.failures import describe, traceback_text
from relxfer.spec.engines import EngineContext, evaluation_engine, trainer
from relxfer.spec.load import spec_from_dict
from relxfer.spec.types import RunStatus, Spec, chat_settings
from relxfer.tracking.checkpoint_mirror import CheckpointMirror
from relxfer.tracking.client import TAG, UNFINISHED, ParentRun, Tracker
from relxfer.train.base import TrainRequest

Report = Callable[[str], None]
T = TypeVar("T")
RESOLVED_SPEC = "spec/resolved.json"  # artifacts of the parent run a worker rebuilds the study from
HELD_OUT_IDS = "data/held_out_ids.json"


# What became of a cell in this study (relxfer.spec.types.RunStatus).
FINISHED = RunStatus.FINISHED
SKIPPED = RunStatus.SKIPPED
FAILED = RunStatus.FAILED
NOT_RUN = RunStatus.NOT_RUN


@dataclass
class CellOutcome:
    cell: Cell
    run_id: str
    status: RunStatus
    metrics: dict = field(default_factory=dict)
    where: str = ""  # the machine that ran it
    error: str = ""  # why it FAILED or was NOT_RUN, one line in words
    traceback: str = ""  # the full traceback of a FAILED cell (its run's error.txt)


@dataclass
class StudyContext:
    """Everything a cell needs, in whichever process runs it."""

    spec: Spec
    tracker: Tracker
    parent: ParentRun
    data: StudyData
    cache_dir: Path
    report: Report = lambda _: None
    progress: bool = True
    force: bool = False
    where: str = field(default_factory=socket.gethostname)
    fail_fast: bool = False  # stop at the first failed cell (the driver's choice; workers never stop on their own)
    # Packages the cells run through beside relxfer's own (the `ray` executor: ray), whose
    # versions every run records.
    packages: tuple[str, ...] = ()


def run_provenance(packages: tuple[str, ...] = ()) -> dict[str, str]:
    """What this process makes runs with (relxfer.provenance), as tags of every run it records."""
    return {TAG + k: v for k, v in provenance_tags(packages).items()}


def study_from_parent_run(
    tracking_uri: str, parent: ParentRun, cache_dir: Path, force: bool, where: str, packages: tuple[str, ...] = ()
) -> StudyContext:
    """The study as a worker sees it: the resolved spec and held-out ids from the parent run,
    the data loaded from the spec's source on this machine and checked against those ids."""
    tracker = Tracker(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="relxfer-study-") as tmp:
        spec_file = tracker.download(parent.run_id, RESOLVED_SPEC, Path(tmp) / "spec")
        held_out = json.loads(tracker.download(parent.run_id, HELD_OUT_IDS, Path(tmp) / "data").read_text())[
            "held_out_ids"
        ]
        spec = spec_from_dict(json.loads(spec_file.read_text()), Path(f"run {parent.run_id}: {RESOLVED_SPEC}"))
    expected = tracker.run_tags(parent.run_id).get(f"{TAG}spec_hash")
    if spec.hash != expected:
        raise RelxferError(
            f"{where}: the resolved spec of run {parent.run_id} hashes to {spec.hash} here, to {expected} on the "
            f"driver: install the driver's relxfer version on every node"
        )
    data = load_study_data(spec)
    if list(data.held_out_ids) != list(held_out):
        raise DataError(
            f"{where}: the study's data here differ from the driver's (other held-out question ids): "
            f"give every node the same data source ({data.source})"
        )
    return StudyContext(
        spec, tracker, parent, data, cache_dir, progress=False, force=force, where=where, packages=packages
    )


def cell_tags(spec: Spec, cell: Cell, builder: PromptBuilder) -> dict[str, str]:
    model = spec.model(cell.model)
    tags = {
        f"{TAG}kind": cell.kind,
        f"{TAG}model": cell.model,
        f"{TAG}model_source": model.source,
        f"{TAG}model_revision": model.revision or "",
        f"{TAG}architecture": model.architecture,
        f"{TAG}cell_key": cell.key,
        f"{TAG}spec_hash": spec.hash,
        f"{TAG}spec_name": spec.name,
        f"{TAG}template": builder.template_id,
        f"{TAG}seed": "" if cell.seed is None else str(cell.seed),
    }
    if cell.kind == "evaluate":  # (an evaluation cell has every one of these)
        tags |= {
            f"{TAG}condition": str(cell.condition),
            f"{TAG}language": str(cell.language),
            f"{TAG}group": str(cell.group),
            f"{TAG}role": str(cell.role),
            f"{TAG}family": str(cell.family),
        }
    return tags


def _flatten(prefix: str, value: object) -> dict[str, str]:
    """Nested settings as dotted keys, each value as MLflow records it (lists as JSON)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= _flatten(f"{prefix}.{k}" if prefix else k, v)
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else str(value)}


def planned(value: T | None, what: str, cell: Cell) -> T:
    """A field the plan sets on every cell of this kind (a fine-tune's seed, an evaluation's
    language): its absence is a bug in the plan, not bad input."""
    if value is None:
        raise RelxferError(f"{cell.run_name}: planned without {what}")
    return value


class CellRunner:
    """Runs cells of one study in this process; `outcomes` lists every cell it ran or skipped."""

    def __init__(self, study: StudyContext):
        self.study = study
        self.spec = study.spec
        self.tracker = study.tracker
        self._builders: dict[str, PromptBuilder] = {}
        self.outcomes: list[CellOutcome] = []

    # --- look before running -----------------------------------------------------------------

    def finished_run(self, cell: Cell) -> tuple[str | None, list]:
        """(id of a FINISHED run of the cell or None, the cell's unfinished runs)."""
        runs = self.tracker.cell_runs(self.study.parent.experiment_id, cell.key)
        done = [r for r in runs if r.info.status == "FINISHED"]
        if self.study.force:  # only this study's own runs count: a retried task must not redo them
            done = [r for r in done if r.data.tags.get("mlflow.parentRunId") == self.study.parent.run_id]
        return (done[-1].info.run_id if done else None), [r for r in runs if r.info.status in UNFINISHED]

    def skip(self, cell: Cell, run_id: str) -> str:
        self.outcomes.append(CellOutcome(cell, run_id, SKIPPED, where=self.study.where))
        self.study.report(f"skip  {cell.run_name} (finished run {run_id})")
        return run_id

    # --- engines -------------------------------------------------------------------------------

    def engine_context(self, model_name: str) -> EngineContext:
        return EngineContext(
            self.spec.model(model_name), self.spec, self.study.cache_dir, self.study.report, self.study.progress
        )

    def open_engine(self, model_name: str):
        """The model's evaluation engine; nothing starts until its first backend is asked for."""
        return evaluation_engine(self.engine_context(model_name))

    def close_engine(self, engine) -> None:
        """Keep the engine's files with the study, then release it, whatever happens."""
        try:
            for artifact_path, file in engine.log_files().items():
                self.tracker.log_artifact(self.study.parent.run_id, file, artifact_path)
        finally:
            engine.close()

    # --- cells -------------------------------------------------------------------------------

    def finetune(self, cell: Cell) -> str:
        """Run (or resume, or skip) a fine-tune cell; returns the id of its FINISHED run."""
        finished, orphans = self.finished_run(cell)
        if finished:
            return self.skip(cell, finished)
        engine = trainer(self.engine_context(cell.model))
        data = self.study.data
        finetune = self.spec.finetune
        assert finetune is not None  # the plan has fine-tune cells only for a spec with a fine-tune

        def work(run_id: str) -> dict:
            model = self.spec.model(cell.model)
            logged = self.tracker.last_step(run_id, "train_loss")
            self.tracker.set_tags(run_id, {TAG + k: v for k, v in engine.run_tags().items()})
            if logged == 0:
                self.tracker.log_params(
                    run_id, _flatten("finetune", finetune.to_dict()) | {"model_source": model.source}
                )
                self.tracker.log_dataset(run_id, "train", data.train_digest, data.source, "train")
            builder = self.builder(cell.model)
            examples = [builder.training_example(item) for item in data.train_items]
            # The run's artifacts hold the checkpoints: what is on this machine's disk may be
            # stale or another machine's, so the working directory starts empty.
            work_dir = self.study.cache_dir / "finetune" / cell.key
            shutil.rmtree(work_dir, ignore_errors=True)
            mirror = CheckpointMirror(self.tracker, run_id)
            restored = mirror.restore(work_dir)
            self.study.report(
                f"train {cell.run_name}: {len(examples)} examples"
                + (f", resuming from step {restored} (step {logged} logged)" if restored or logged else "")
            )

            def on_step(step: int, metrics: dict) -> None:
                # Text values are tags (e.g. where a service saved the state a re-run resumes from).
                tags = {TAG + k: v for k, v in metrics.items() if isinstance(v, str)}
                if tags:
                    self.tracker.set_tags(run_id, tags)
                # A resumed trainer repeats the steps after its last checkpoint; the run has them.
                numbers = {k: v for k, v in metrics.items() if not isinstance(v, str)}
                if step > logged and numbers:
                    self.tracker.log_metrics(run_id, numbers, step)

            request = TrainRequest(
                model,
                finetune,
                examples,
                work_dir,
                planned(cell.seed, "a seed", cell),
                self.study.cache_dir,
                self.study.progress,
                on_checkpoint=mirror.upload,
            )
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
            mirror.clear()
            shutil.rmtree(work_dir, ignore_errors=True)
            self.study.report(f"done  {cell.run_name}: final loss {result.final_loss:.3f} after {result.steps} steps")
            return summary

        return self._in_cell_run(cell, orphans, work, resume=True)

    def evaluate(self, cell: Cell, engine, finetune_run_id: str | None, adapter: Adapter | None = None) -> str:
        """Run (or skip) an evaluation cell on `engine`, with the adapter of `finetune_run_id`
        for fine-tuned conditions (or `adapter`, when the caller has one); returns the id of
        its FINISHED run."""
        finished, orphans = self.finished_run(cell)
        if finished:
            return self.skip(cell, finished)
        if cell.finetune_key and adapter is None:
            if finetune_run_id is None:
                raise RelxferError(f"{cell.run_name}: its fine-tune {cell.finetune_key} has no FINISHED run")
            adapter = Adapter(
                cell.finetune_key, self._fetch_adapter(finetune_run_id, cell.finetune_key), finetune_run_id
            )
        data = self.study.data

        language = planned(cell.language, "a language", cell)

        def work(run_id: str) -> dict:
            backend = engine.backend(adapter)
            items = data.eval_items[language]
            self.tracker.log_params(
                run_id,
                {
                    "prompt_preset": self.spec.prompt.preset,
                    "labels": json.dumps(list(self.builder(cell.model).labels)),
                    "template_id": self.builder(cell.model).template_id,
                    "condition": str(cell.condition),
                },
            )
            if cell.condition is not None and cell.condition.uses_cot:
                # Tags, not params: as params only CoT runs have, MLflow's compare page would plot
                # them against the design factors as if they varied.
                self.tracker.set_tags(run_id, _flatten(f"{TAG}cot", self.spec.cot.to_dict()))
            self.tracker.log_dataset(run_id, f"eval-{language}", data.eval_digests[language], data.source, "eval")
            result = evaluate_items(
                backend,
                items,
                self.builder(cell.model),
                cot=self.spec.cot if cell.condition is not None and cell.condition.uses_cot else None,
                batch_size=self.spec.evaluation.batch_size,
                progress=self.study.progress,
            )
            # After the evaluation: an engine may learn what it records only on the first prompts.
            self.tracker.set_tags(run_id, {TAG + k: v for k, v in engine.run_tags().items()})
            self.tracker.log_table(run_id, result.records)
            self.tracker.log_metrics(run_id, result.metrics)
            m = result.metrics
            self.study.report(
                f"done  {cell.run_name}: accuracy {m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] n={m['n_items']}"
            )
            return result.metrics

        return self._in_cell_run(cell, orphans, work)

    # --- runs ----------------------------------------------------------------------------------

    def _start_cell_run(self, cell: Cell, orphans: list, resume: bool) -> str:
        """A run for `cell`: when resuming (fine-tunes), the newest orphaned run a process left
        behind, or a FAILED one with a checkpoint to go on from (its failure record is cleared);
        a new run otherwise. Orphans still marked RUNNING are marked KILLED so only one run can
        end FINISHED; FAILED runs stay FAILED, with why."""
        parent = self.study.parent
        provenance = run_provenance(self.study.packages)
        resumable = [o for o in orphans if o.info.status != FAILED or self._has_checkpoint(o.info.run_id)]
        if resume and resumable:
            run_id = resumable[-1].info.run_id
            self.tracker.reopen(run_id)
            # The install that finishes the run is the one it records.
            self.tracker.set_tags(run_id, {"mlflow.parentRunId": parent.run_id, f"{TAG}resumed": "true", **provenance})
            orphans = [o for o in orphans if o.info.run_id != run_id]
        else:
            run_id = self.tracker.start_child(
                parent, cell.run_name, cell_tags(self.spec, cell, self.builder(cell.model)) | provenance
            )
        for orphan in orphans:
            if orphan.info.status not in ("KILLED", FAILED):
                self.tracker.end(orphan.info.run_id, "KILLED")
        return run_id

    def _has_checkpoint(self, run_id: str) -> bool:
        return CheckpointMirror(self.tracker, run_id).has_checkpoint()

    def _in_cell_run(self, cell: Cell, orphans: list, work: Callable[[str], dict], resume: bool = False) -> str:
        run_id = self._start_cell_run(cell, orphans, resume)
        try:
            metrics = work(run_id)
        except BaseException as e:
            cause, trace = describe(e, cell.kind), traceback_text(e)
            self.outcomes.append(
                CellOutcome(cell, run_id, FAILED, where=self.study.where, error=cause, traceback=trace)
            )
            # Stopped from outside (Ctrl-C, a cancelled Ray task) is not a failure of the cell.
            ended = "KILLED" if isinstance(e, KeyboardInterrupt) else FAILED
            try:
                self.tracker.record_failure(run_id, cause, trace)
                self.tracker.end(run_id, ended)
            except TrackingError:
                pass  # the server is gone; the run stays RUNNING and the re-run marks it KILLED
            raise
        self.tracker.end(run_id, FINISHED)
        self.outcomes.append(CellOutcome(cell, run_id, FINISHED, metrics, where=self.study.where))
        return run_id

    def builder(self, model_name: str) -> PromptBuilder:
        """The prompt builder of a model: its own prompt format, bound to its chat template
        (rendered from its tokenizer alone) when the format is one, so that training examples,
        tags and evaluation records carry the same template id."""
        if model_name not in self._builders:
            from relxfer.models.chat_format import prompt_builder
            from relxfer.models.loading import load_tokenizer
            from relxfer.models.tokenization import default_add_bos_token

            model = self.spec.model(model_name)
            needs_tokenizer = chat_settings(self.spec.chat_template(model)) is not None
            tokenizer = load_tokenizer(model, self.study.cache_dir) if needs_tokenizer else None
            self._builders[model_name] = prompt_builder(self.spec, model, tokenizer, default_add_bos_token())
        return self._builders[model_name]

    def _fetch_adapter(self, finetune_run_id: str, finetune_key: str) -> Path:
        """The adapter as the tracking server stores it, not a local path only the trainer knew.
        Downloaded into a private directory and renamed into place, so a second process reading
        the same adapter never sees a half-written copy."""
        final = self.study.cache_dir / "adapters" / finetune_key / finetune_run_id
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


def attempt(runner: CellRunner, cell: Cell, work: Callable[[], object]) -> Exception | None:
    """Run `work` (one cell on `runner`) and return its error, if any, instead of raising it: a
    failed cell is the executor's to record, not a reason to stop. A cell that failed before
    its run existed (a model that would not load, an adapter that would not download) gets its
    FAILED outcome here; the runner records the others. Ctrl-C still stops everything."""
    recorded = len(runner.outcomes)
    try:
        work()
        return None
    except Exception as e:  # noqa: BLE001 - any failure of a cell becomes its outcome
        if len(runner.outcomes) == recorded:
            runner.outcomes.append(
                CellOutcome(
                    cell,
                    "",
                    FAILED,
                    where=runner.study.where,
                    error=describe(e, cell.kind),
                    traceback=traceback_text(e),
                )
            )
        return e
