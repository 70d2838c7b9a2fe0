"""The `local` executor: every cell in this process, one model at a time, fine-tunes first, then
the model's evaluations grouped by adapter on one evaluation engine (opened on its first
backend, closed when the model's cells are done, whatever ends them).

A cell that fails is recorded and the study goes on (relxfer.run.ledger: the cells that need a
failed fine-tune are recorded NOT_RUN; with fail-fast the first failure stops the study). A
tracking server that is gone stops it: nothing more could be recorded.

Two processes on the same spec never run the same cell twice: each cell is claimed with a file
lock (relxfer.run.claims) before it runs, and a process skips cells another one holds, coming back
to them at the end.

Before any run exists, a fine-tune that cannot fit this machine's memory is refused (the floor of
relxfer.spec.memory, the adapter included, against this machine's RAM or GPUs)."""

from __future__ import annotations

import os
from collections.abc import Callable

from relxfer.errors import ModelError, TrackingError
from relxfer.plan.cells import Cell
from relxfer.run.cell import CellOutcome, CellRunner, StudyContext, attempt
from relxfer.run.claims import CellClaims
from relxfer.run.ledger import Ledger
from relxfer.spec.memory import misfit_here

# Fine-tune engines that hold the model on this machine (the others work on a cluster or a service).
RUNS_HERE = ("local", "torchrun")


class LocalExecutor:
    kind = "local"
    packages: tuple[str, ...] = ()

    def check(self, spec, tracker) -> None:
        """Refuse a fine-tune whose memory floor exceeds this machine (the runner's preflight
        checked everything else)."""
        if spec.finetune is None:
            return
        host_gb, gpu_gb = machine_memory_gb()
        for i, model in enumerate(spec.models):
            if model.engines.finetune.kind not in RUNS_HERE:
                continue
            problem = misfit_here(model, spec.finetune, host_gb, gpu_gb if model.resources.gpus else None)
            if problem:
                raise ModelError(f"{spec.path}: /models/{i}: {problem}")

    def run(
        self, study: StudyContext, cells: list[Cell], finished: dict[str, str], outcomes: list[CellOutcome]
    ) -> None:
        self.claims = CellClaims(study.cache_dir)
        self.runner = CellRunner(study)
        self.ledger = Ledger(outcomes, study.report, study.fail_fast)
        for model in study.spec.models:
            self._run_model([c for c in cells if c.model == model.name], finished)

    def _run_model(self, cells: list[Cell], finished: dict[str, str]) -> None:
        finetunes = [c for c in cells if c.kind == "finetune"]
        for cell in self._in_claim_order(finetunes, finished):
            self._run_cell(cell, self.runner.finetune)
        evaluations = sorted((c for c in cells if c.kind == "evaluate"), key=lambda c: c.finetune_key or "")
        if not evaluations:
            return
        engine = self.runner.open_engine(cells[0].model)
        try:
            runs = self.ledger.finetune_runs  # filled as the fine-tunes above finished or were skipped
            for cell in self._in_claim_order(evaluations, finished):
                self._run_cell(cell, lambda c: self.runner.evaluate(c, engine, runs.get(c.finetune_key or "")))
        finally:
            self.runner.close_engine(engine)

    def _run_cell(self, cell: Cell, work: Callable[[Cell], str]) -> None:
        """Run `cell` unless what it needs failed (or the study stopped), and record what became of it."""
        if not self.ledger.admit(cell):
            return
        try:
            error = attempt(self.runner, cell, lambda: self._claimed(cell, work))
        finally:  # Ctrl-C too: the interrupted cell's FAILED run goes into cells.json
            self._record()
        if isinstance(error, TrackingError):
            raise error

    def _record(self) -> None:
        """Move what the runner produced into the study's ledger."""
        for outcome in self.runner.outcomes:
            self.ledger.record(outcome)
        self.runner.outcomes.clear()

    def _in_claim_order(self, cells: list[Cell], finished: dict[str, str]):
        """Yield each cell to run: first every cell no other process holds, then (waiting for
        their claims) the ones that were held. Cells already finished are reported and skipped."""
        deferred = []
        for cell in cells:
            if cell.key in finished:
                self.runner.skip(cell, finished[cell.key])
                self._record()
            elif self._claim_is_free(cell):
                yield cell
            else:
                self.runner.study.report(f"busy  {cell.run_name}: another process holds it; coming back to it")
                deferred.append(cell)
        yield from deferred

    def _claim_is_free(self, cell: Cell) -> bool:
        with self.claims.claim(cell.key, wait=False) as got:
            return got

    def _claimed(self, cell: Cell, work: Callable[[Cell], str]) -> str:
        """Run `cell` while holding its claim (the runner looks at the tracking server again
        first, and skips the cell when a FINISHED run of it appeared meanwhile)."""
        with self.claims.claim(cell.key, wait=True):
            return work(cell)


def machine_memory_gb() -> tuple[float, float | None]:
    """(this machine's memory, the memory of its smallest GPU or None without one), in GB."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    import torch

    if not torch.cuda.is_available():
        return host, None
    sizes = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return host, min(sizes) / 1e9
