"""What became of a study's cells, as the executor learns it, and what may still run: the rules
every executor follows after a failure, kept in one place.

- A cell that fails does not stop the cells that do not depend on it.
- The evaluations that need a failed fine-tune's adapter do not run; they are recorded NOT_RUN
  with the reason ("its fine-tune failed: ...").
- With `fail_fast`, the first failure stops the study: every cell not started by then is
  recorded NOT_RUN.

Only a FINISHED run counts as done, so a re-run runs exactly the FAILED and NOT_RUN cells.
"""

from __future__ import annotations

from collections.abc import Callable

from relxfer.plan.cells import Cell
from relxfer.run.cell import FAILED, NOT_RUN, CellOutcome

Report = Callable[[str], None]


class Ledger:
    def __init__(self, outcomes: list[CellOutcome], report: Report, fail_fast: bool = False):
        self.outcomes = outcomes  # the study's list: every recorded outcome is appended to it
        self.report = report
        self.fail_fast = fail_fast
        self.finetune_runs: dict[str, str] = {}  # fine-tune key -> its FINISHED run
        self.finetune_failed: dict[str, str] = {}  # fine-tune key -> why it failed
        self.first_failure: CellOutcome | None = None

    def record(self, outcome: CellOutcome, where: str = "") -> None:
        """Append `outcome`; a failure (and a cell not run) is reported as it happens, `where`
        naming the machine when the executor spreads cells over several."""
        cell = outcome.cell
        if cell.kind == "finetune":
            if outcome.status in (FAILED, NOT_RUN):
                self.finetune_failed[cell.key] = outcome.error
            else:
                self.finetune_runs[cell.key] = outcome.run_id
        if outcome.status == FAILED and self.first_failure is None:
            self.first_failure = outcome
        self.outcomes.append(outcome)
        if outcome.status == FAILED:
            run = f" (run {outcome.run_id})" if outcome.run_id else ""
            self.report(f"FAIL  {cell.run_name}: {outcome.error}{run}{where}")
        elif outcome.status == NOT_RUN:
            self.report(f"not run {cell.run_name}: {outcome.error}")

    @property
    def stopped(self) -> bool:
        """Whether no further cell may start (fail-fast, after a failure)."""
        return self.fail_fast and self.first_failure is not None

    @property
    def stop_reason(self) -> str | None:
        """Why no further cell may start, or None while cells may."""
        if not self.stopped:
            return None
        assert self.first_failure is not None
        return f"the study stopped at the first failure ({self.first_failure.cell.run_name}; --fail-fast)"

    def why_not(self, cell: Cell) -> str | None:
        """Why `cell` must not run now, or None when it may."""
        if self.stopped:
            return self.stop_reason
        if cell.finetune_key in self.finetune_failed:
            return finetune_failed(self.finetune_failed[cell.finetune_key])
        return None

    def not_run(self, cell: Cell, why: str) -> None:
        self.record(CellOutcome(cell, "", NOT_RUN, error=why))

    def admit(self, cell: Cell) -> bool:
        """Whether `cell` may run; when not, it is recorded NOT_RUN with the reason."""
        why = self.why_not(cell)
        if why is not None:
            self.not_run(cell, why)
        return why is None


def finetune_failed(cause: str) -> str:
    """The reason a cell that needs a failed fine-tune's adapter did not run."""
    return f"its fine-tune failed: {cause}"
