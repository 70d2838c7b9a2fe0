"""The `local` executor: every cell in this process, one model at a time, fine-tunes first, then
the model's evaluations grouped by adapter on one evaluation engine (opened on its first
backend, closed when the model's cells are done, whatever ends them).

Two processes on the same spec never run the same cell twice: each cell is claimed with a file
lock (relxfer.run.claims) before it runs, and a process skips cells another one holds, coming back
to them at the end."""

from __future__ import annotations

from collections.abc import Callable

from relxfer.plan.cells import Cell
from relxfer.run.cell import CellOutcome, CellRunner, StudyContext
from relxfer.run.claims import CellClaims


class LocalExecutor:
    kind = "local"

    def check(self, spec, tracker) -> None:
        pass  # this machine already passed the runner's preflight

    def run(
        self, study: StudyContext, cells: list[Cell], finished: dict[str, str], outcomes: list[CellOutcome]
    ) -> None:
        self.claims = CellClaims(study.cache_dir)
        self.runner = CellRunner(study)
        self.runner.outcomes = outcomes
        for model in study.spec.models:
            self._run_model([c for c in cells if c.model == model["name"]], finished)

    def _run_model(self, cells: list[Cell], finished: dict[str, str]) -> None:
        finetunes = [c for c in cells if c.kind == "finetune"]
        finetune_runs = {c.key: finished[c.key] for c in finetunes if c.key in finished}
        for cell in self._in_claim_order(finetunes, finished):
            finetune_runs[cell.key] = self._claimed(cell, self.runner.finetune)
        evaluations = sorted((c for c in cells if c.kind == "evaluate"), key=lambda c: c.finetune_key or "")
        if not evaluations:
            return
        engine = self.runner.open_engine(cells[0].model)
        try:
            for cell in self._in_claim_order(evaluations, finished):
                self._claimed(cell, lambda c: self.runner.evaluate(c, engine, finetune_runs.get(c.finetune_key)))
        finally:
            self.runner.close_engine(engine)

    def _in_claim_order(self, cells: list[Cell], finished: dict[str, str]):
        """Yield each cell to run: first every cell no other process holds, then (waiting for
        their claims) the ones that were held. Cells already finished are reported and skipped."""
        deferred = []
        for cell in cells:
            if cell.key in finished:
                self.runner.skip(cell, finished[cell.key])
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
