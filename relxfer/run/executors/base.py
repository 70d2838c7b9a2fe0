"""The interface of executors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from relxfer.plan.cells import Cell
    from relxfer.run.cell import CellOutcome, StudyContext
    from relxfer.spec.load import Spec
    from relxfer.tracking.client import Tracker


class Executor(Protocol):
    """Built by `relxfer.run.executors.make_executor(kind, ...)`; used by `relxfer.run.runner.StudyRunner`."""

    kind: str
    packages: tuple[str, ...]  # what it runs cells through (e.g. ray), recorded with every run's versions

    def check(self, spec: Spec, tracker: Tracker) -> None:
        """Fail (RelxferError, one line) before any run exists when the study cannot run here:
        a cell that no machine could hold, a tracking store the workers cannot reach."""

    def run(
        self, study: StudyContext, cells: list[Cell], finished: dict[str, str], outcomes: list[CellOutcome]
    ) -> None:
        """Run every cell of `cells` not in `finished` (key -> FINISHED run id, looked up by the
        driver), fine-tunes before the evaluations that need them, appending one outcome per
        cell to `outcomes` as it comes (so an interrupted study still reports what it did)."""
