"""Rebuild the item-level frame of a study from the tracking server: one row per model x seed x
condition x language x question, with the design factors taken from each run's tags.

`load_items` asks the tracker; `assemble_items` is the pure part (run tags + per-item tables ->
frame), which the simulator (`tests.support.simulate`) uses too, so simulated studies reach the
statistics through the same code as logged ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from relxfer.tracking.client import TAG, Tracker

if TYPE_CHECKING:
    from relxfer.tracking.client import Run

ITEM_COLUMNS = [
    "model",
    "seed",
    "condition",
    "language",
    "group",
    "role",
    "family",
    "question_id",
    "passage_id",
    "gold",
    "predicted",
    "correct",
    "run_id",
]
FACTORS = ("model", "condition", "language", "group", "role", "family", "seed")
RUN_COLUMNS = [*FACTORS, "run_id", "experiment_id", "logged_accuracy", "n_items"]


def run_row(
    tags: dict[str, str], run_id: str, experiment_id: str = "", metrics: dict[str, float] | None = None
) -> dict[str, str | float | None]:
    """One evaluation run's factors (from its `relxfer.*` tags) and its logged accuracy."""
    logged = metrics or {}
    row: dict[str, str | float | None] = {factor: tags.get(f"{TAG}{factor}", "") for factor in FACTORS}
    return row | {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "logged_accuracy": logged.get("accuracy"),
        "n_items": logged.get("n_items"),
    }


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per evaluation run (MLflow Run objects): its factors and its logged accuracy."""
    rows = [run_row(r.data.tags, r.info.run_id, r.info.experiment_id, r.data.metrics) for r in runs]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _expand_seedless(items: pd.DataFrame) -> pd.DataFrame:
    """Baseline and CoT runs do not depend on the fine-tuning seed (their tag is empty); pair them
    with every seed of the study so paired analyses line up per seed. The copies are marked
    `seedless` so tables show each such run once and without a seed."""
    seeds = sorted({s for s in items["seed"] if s != ""}, key=int) or ["0"]
    seeded = items[items["seed"] != ""].assign(seedless=False)
    seedless = items[items["seed"] == ""]
    copies = [seedless.assign(seed=s, seedless=True) for s in seeds]
    out = pd.concat([seeded, *copies], ignore_index=True)
    out["seed"] = out["seed"].astype(int)
    return out


def assemble_items(meta: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The item frame from run rows (`runs_frame`/`run_row`) and the runs' per-item tables (one
    frame with a run_id column, as `Tracker.load_predictions` returns)."""
    items = predictions.merge(meta[[*FACTORS, "run_id"]], on="run_id", how="inner", suffixes=("_item", ""))
    if "language_item" in items:
        items = items.drop(columns=["language_item"])
    items = _expand_seedless(items)
    return items[ITEM_COLUMNS + [c for c in items.columns if c not in ITEM_COLUMNS]]


def load_items(
    tracker: Tracker, experiment: str | None = None, parent: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, items): the FINISHED evaluation runs and their per-item predictions."""
    runs = tracker.evaluation_runs(experiment_name=experiment, parent_id=parent)
    meta = runs_frame(runs)
    if meta.empty:
        return meta, pd.DataFrame(columns=ITEM_COLUMNS)
    return meta, assemble_items(meta, tracker.load_predictions(runs))
