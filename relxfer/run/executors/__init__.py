"""Executors: how a study's cells are spread over processes and machines. `local` runs them one
after another in this process (the default); `ray` runs them as tasks on a Ray cluster. Both
run each cell through the same code (`relxfer.run.cell.CellRunner`), so the MLflow runs they
leave behind are the same. Implementations are imported on first use: `--executor local` never
imports Ray."""

from __future__ import annotations

import importlib

EXECUTORS = {
    "local": "relxfer.run.executors.local:LocalExecutor",
    "ray": "relxfer.run.executors.ray:RayExecutor",
}


def make_executor(kind: str, **options):
    """The executor of `kind`, built with its own options (e.g. `address` for `ray`)."""
    from relxfer.errors import RelxferError

    module, name = EXECUTORS[kind].split(":")
    try:
        implementation = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name != kind:
            raise
        raise RelxferError(f"the {kind} executor needs the {kind} package: pip install 'relxfer[{kind}]'") from None
    return implementation(**options)
