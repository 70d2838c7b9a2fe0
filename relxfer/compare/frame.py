"""Rebuild the item-level frame of a study from the tracking server: one row per model x seed x
condition x language x question, with the design factors taken from each run's tags."""

from __future__ import annotations

import pandas as pd

from ..tracking import TAG, Tracker

ITEM_COLUMNS = ["model", "seed", "condition", "language", "group", "role", "family", "question_id", "passage_id",
                "gold", "predicted", "correct", "run_id"]
FACTORS = ("model", "condition", "language", "group", "role", "family", "seed")


def runs_frame(runs: list) -> pd.DataFrame:
    """One row per evaluation run: its factors (tags) and its logged accuracy."""
    rows = []
    for run in runs:
        tags = run.data.tags
        row = {factor: tags.get(f"{TAG}{factor}", "") for factor in FACTORS}
        row |= {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "logged_accuracy": run.data.metrics.get("accuracy"),
                "n_items": run.data.metrics.get("n_items")}
        rows.append(row)
    return pd.DataFrame(rows, columns=[*FACTORS, "run_id", "experiment_id", "logged_accuracy", "n_items"])


def _expand_seedless(items: pd.DataFrame) -> pd.DataFrame:
    """Baseline and CoT runs do not depend on the fine-tuning seed (their tag is empty); pair them
    with every seed of the study so paired analyses line up per seed."""
    seeds = sorted({s for s in items["seed"] if s != ""}) or ["0"]
    seeded = items[items["seed"] != ""]
    seedless = items[items["seed"] == ""]
    copies = [seedless.assign(seed=s) for s in seeds]
    out = pd.concat([seeded, *copies], ignore_index=True)
    out["seed"] = out["seed"].astype(int)
    return out


def load_items(tracker: Tracker, experiment: str | None = None, parent: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, items): the FINISHED evaluation runs and their per-item predictions."""
    runs = tracker.evaluation_runs(experiment_name=experiment, parent_id=parent)
    meta = runs_frame(runs)
    if meta.empty:
        return meta, pd.DataFrame(columns=ITEM_COLUMNS)
    predictions = tracker.load_predictions(runs)
    items = predictions.merge(meta[[*FACTORS, "run_id"]], on="run_id", how="inner", suffixes=("_item", ""))
    if "language_item" in items:
        items = items.drop(columns=["language_item"])
    items = _expand_seedless(items)
    return meta, items[ITEM_COLUMNS + [c for c in items.columns if c not in ITEM_COLUMNS]]
