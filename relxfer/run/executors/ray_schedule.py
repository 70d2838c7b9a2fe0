"""The Ray driver's loop: claim the cells that are ready, submit them as tasks, collect what
finishes, until every cell of the study has an outcome. What a failure means for the other cells
is the study's ledger's to say (relxfer.run.ledger, as for every executor): the cells that need a
failed fine-tune are recorded NOT_RUN, and with fail-fast the first failure cancels what was
submitted. One progress bar counts cells done across the cluster; Ctrl-C cancels what was
submitted (see relxfer.run.executors.ray; the retry and polling constants live here)."""

from __future__ import annotations

import time
from collections import defaultdict

import ray

from relxfer.plan.cells import Cell
from relxfer.run.cell import FAILED, FINISHED, NOT_RUN, SKIPPED, CellOutcome, StudyContext
from relxfer.run.executors import ray_tasks
from relxfer.run.executors.ray_claims import ClusterClaims
from relxfer.run.failures import describe, traceback_text
from relxfer.run.ledger import Ledger, finetune_failed
from relxfer.spec.resources import cell_request
from relxfer.spec.types import ModelSpec
from relxfer.tracking.client import ERROR_TAG

MAX_RETRIES = 3  # retries of a task whose worker or node died (never of an error a cell raised)
POLL_S = 1.0  # how often the driver looks for finished tasks and for cells another driver freed
CANCEL_GRACE_S = 20.0  # after Ctrl-C: time for running cells to record KILLED before workers are killed

_remote: dict[str, object] = {}


def _task(name: str):
    """ray.remote of a worker function, made once per driver process."""
    if name not in _remote:
        _remote[name] = ray.remote(getattr(ray_tasks, name))
    return _remote[name]


class Schedule:
    def __init__(self, study: StudyContext, tracking_uri: str, cells_per_task: int | None, outcomes: list[CellOutcome]):
        self.study = study
        self.uri = tracking_uri
        self.cells_per_task = cells_per_task
        self.outcomes = outcomes
        self.pending: list[Cell] = []
        self.inflight: dict[ray.ObjectRef, list[Cell]] = {}
        self.ledger = Ledger(outcomes, self._write, study.fail_fast)
        self.finetune_refs: dict[str, ray.ObjectRef] = {}  # fine-tunes this driver submitted
        self.busy_reported: set[str] = set()

    def run(self, cells: list[Cell], finished: dict[str, str]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(cells), desc="cells", unit="cell", disable=not self.study.progress)
        self.claims = ClusterClaims()
        for cell in cells:
            if cell.key in finished:
                self._record(CellOutcome(cell, finished[cell.key], SKIPPED))
            else:
                self.pending.append(cell)
        try:
            while self.pending or self.inflight:
                if self.ledger.stopped:  # fail-fast: nothing more starts, what runs is cancelled
                    self._cancel(self.ledger.stop_reason or "")
                    for cell in self.pending:
                        self._record(CellOutcome(cell, "", NOT_RUN, error=self.ledger.why_not(cell) or ""))
                    self.pending.clear()
                    break
                self._submit_ready()
                if not self.inflight:  # all that is left is held by another driver
                    wait_a_moment()
                    continue
                done, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=POLL_S)
                # Fine-tunes first: an evaluation batch that failed with its fine-tune is then NOT_RUN.
                for ref in sorted(done, key=lambda ref: self.inflight[ref][0].kind != "finetune"):
                    self._collect(ref)
        except KeyboardInterrupt:
            self._cancel("interrupted")
            raise
        finally:
            self.bar.close()
            try:
                self.claims.release_all()
            except Exception:  # noqa: BLE001 - Ray is gone: the claims went with this driver's lease
                pass

    # --- submitting ------------------------------------------------------------------------------

    def _ready(self, cell: Cell) -> bool:
        key = cell.finetune_key
        return cell.kind == "finetune" or not key or key in self.ledger.finetune_runs or key in self.finetune_refs

    def _submit_ready(self) -> None:
        for cell in [c for c in self.pending if self.ledger.why_not(c)]:
            self.pending.remove(cell)
            self.ledger.admit(cell)  # records it NOT_RUN, with the reason
            self.bar.update(1)
        ready = [c for c in self.pending if self._ready(c)]
        if not ready:
            return
        held = self.claims.acquire([c.key for c in ready])
        for cell in ready:
            if cell.key not in held and cell.key not in self.busy_reported:
                self.busy_reported.add(cell.key)
                self.study.report(f"busy  {cell.run_name}: another driver holds it; waiting for it")
        claimed = [c for c in ready if c.key in held]
        if not claimed:
            return
        # Holding the claims, look again: another driver may have finished some meanwhile.
        done = {} if self.study.force else self.study.tracker.finished_cells(self.study.parent.experiment_id)
        for cell in claimed:
            self.pending.remove(cell)
            if cell.key in done:
                self.claims.release([cell.key])
                self._record(CellOutcome(cell, done[cell.key], SKIPPED))
        submit = [c for c in claimed if c.key not in done]
        args = (self.uri, self.study.parent, self.study.force)
        for cell in (c for c in submit if c.kind == "finetune"):
            options = task_options(self.study.spec.model(cell.model), cell.run_name, "finetune")
            ref = _task("finetune_cell").options(**options).remote(*args, cell)
            self.inflight[ref] = [cell]
            self.finetune_refs[cell.key] = ref
        for batch in batches([c for c in submit if c.kind == "evaluate"], self.cells_per_task):
            key = batch[0].finetune_key
            needs = self.ledger.finetune_runs.get(key) or self.finetune_refs.get(key) if key else None
            name = f"eval/{batch[0].model}/{'adapter-' + key[:8] if key else 'base'} ({len(batch)} cells)"
            options = task_options(self.study.spec.model(batch[0].model), name, "evaluate")
            self.inflight[_task("evaluate_cells").options(**options).remote(*args, batch, needs)] = batch

    # --- collecting ------------------------------------------------------------------------------

    def _collect(self, ref, cancelled: str = "") -> None:
        """Record what the task of `ref` returned; `cancelled`: why this driver cancelled it."""
        cells = self.inflight.pop(ref)
        try:
            results = ray.get(ref)
        except ray.exceptions.RayError as e:  # retries used up, cancelled, or a failed dependency
            results = [self._raised(c, e, cancelled) for c in cells]
            if isinstance(e, ray.exceptions.TaskCancelledError):
                # A cell may have ended on its own (finished, or failed) before the cancel reached it.
                results = [self._ended_before_cancel(o) or o for o in results]
        seen = {o.cell.key for o in results}
        results += [
            CellOutcome(c, "", FAILED, error="the task returned no outcome for it") for c in cells if c.key not in seen
        ]
        for outcome in results:
            self._record(outcome)
        self.claims.release([c.key for c in cells])

    def _raised(self, cell: Cell, error: Exception, cancelled: str) -> CellOutcome:
        """What became of `cell` when its task raised `error`: cancelled by this driver, held back
        by its failed fine-tune (the task's dependency), or failed in its own right."""
        if isinstance(error, ray.exceptions.TaskCancelledError):
            return CellOutcome(cell, "", NOT_RUN, error=f"cancelled ({cancelled or 'by the driver'})")
        if cell.finetune_key in self.ledger.finetune_failed:
            return CellOutcome(cell, "", NOT_RUN, error=finetune_failed(self.ledger.finetune_failed[cell.finetune_key]))
        cause = getattr(error, "cause", None) or error
        return CellOutcome(cell, "", FAILED, error=describe(cause, cell.kind), traceback=traceback_text(cause))

    def _ended_before_cancel(self, outcome: CellOutcome) -> CellOutcome | None:
        """What a cancelled task's cell became when its run ended FINISHED or FAILED under this
        parent before the cancel reached it; None when it did not (it ran no further, or ended KILLED)."""
        runs = self.study.tracker.cell_runs(self.study.parent.experiment_id, outcome.cell.key)
        parent = self.study.parent.run_id
        for run in reversed(runs):
            if run.data.tags.get("mlflow.parentRunId") != parent:
                continue
            if run.info.status == FINISHED:
                return CellOutcome(outcome.cell, run.info.run_id, FINISHED, dict(run.data.metrics))
            if run.info.status == FAILED:
                error = run.data.tags.get(ERROR_TAG) or "failed (see the run's error.txt)"
                return CellOutcome(outcome.cell, run.info.run_id, FAILED, error=error)
        return None

    def _record(self, outcome: CellOutcome) -> None:
        cell = outcome.cell
        if cell.kind == "finetune":
            self.finetune_refs.pop(cell.key, None)
        where = f" on {outcome.where}" if outcome.where else ""
        self.ledger.record(outcome, where)  # reports failures and cells not run
        m = outcome.metrics
        if outcome.status == SKIPPED:
            self._write(f"skip  {cell.run_name} (finished run {outcome.run_id})")
        elif outcome.status not in (FAILED, NOT_RUN) and cell.kind == "finetune":
            self._write(f"done  {cell.run_name}: final loss {m['final_loss']:.3f} after {m['steps']:g} steps{where}")
        elif outcome.status not in (FAILED, NOT_RUN):
            self._write(
                f"done  {cell.run_name}: accuracy {m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] "
                f"n={m['n_items']:g}{where}"
            )
        self.bar.update(1)

    def _write(self, line: str) -> None:
        """A report line that does not tear the progress bar."""
        with self.bar.external_write_mode():
            self.study.report(line)

    # --- Ctrl-C ----------------------------------------------------------------------------------

    def _cancel(self, why: str) -> None:
        refs = list(self.inflight)
        if refs:
            self._write(f"{why}: cancelling {len(refs)} tasks")
        for ref in refs:
            ray.cancel(ref, recursive=True)  # a running cell gets KeyboardInterrupt and ends KILLED
        ready, stuck = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for ref in stuck:
            ray.cancel(ref, force=True)
        for ref in refs:
            if ref in ready:
                self._collect(ref, cancelled=why)
            else:
                for cell in self.inflight.pop(ref):
                    self._record(CellOutcome(cell, "", NOT_RUN, error=f"cancelled ({why})"))
        # A run whose worker was killed stays RUNNING: close it (a re-run would mark it KILLED anyway).
        tracker = self.study.tracker
        for run_id in tracker.running_children(self.study.parent):
            tracker.end(run_id, "KILLED")


def task_options(model: ModelSpec, name: str, kind: str) -> dict:
    request = cell_request(model, kind)
    options = {"num_cpus": request["CPU"], "num_gpus": request["GPU"], "max_retries": MAX_RETRIES, "name": name}
    if "memory" in request:
        options["memory"] = request["memory"]
    return options


def batches(cells: list[Cell], size: int | None) -> list[list[Cell]]:
    """Evaluation cells grouped by (model, adapter) in plan order, cut into `size`-cell batches."""
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.model, cell.finetune_key)].append(cell)
    out = []
    for group in groups.values():
        step = size or len(group)
        out += [group[i : i + step] for i in range(0, len(group), step)]
    return out


def wait_a_moment() -> None:
    time.sleep(POLL_S)
