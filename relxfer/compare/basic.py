"""The first look at a study: accuracy per model x language x condition, gains over the
reference condition, and the raw family gap (mean gain of related languages minus controls)."""

from __future__ import annotations

import pandas as pd

CELL = ["model", "seed", "language", "group", "role"]


def accuracy_by_cell(items: pd.DataFrame) -> pd.DataFrame:
    """Accuracy recomputed from the per-item tables: one row per model x seed x language x condition."""
    return (
        items.groupby([*CELL, "condition"], sort=True)
        .agg(accuracy=("correct", "mean"), n_items=("correct", "size"))
        .reset_index()
    )


def gains_table(accuracy: pd.DataFrame, reference: str = "baseline") -> pd.DataFrame:
    """Wide table: one row per cell, one accuracy column per condition, one gain column per
    non-reference condition (condition accuracy minus reference accuracy, in points of 0..1)."""
    wide = accuracy.pivot_table(index=CELL, columns="condition", values="accuracy").reset_index()
    wide.columns.name = None
    conditions = [c for c in accuracy["condition"].unique() if c != reference]
    if reference in wide:
        for condition in sorted(conditions):
            wide[f"gain_{condition}"] = wide[condition] - wide[reference]
    return wide


def raw_family_gap(gains: pd.DataFrame) -> dict[str, float]:
    """Mean gain of related-group cells minus mean gain of control cells, per gain column."""
    gaps = {}
    for column in [c for c in gains.columns if c.startswith("gain_")]:
        by_role = gains.groupby("role")[column].mean()
        if {"related", "control"} <= set(by_role.index):
            gaps[column.removeprefix("gain_")] = float(by_role["related"] - by_role["control"])
    return gaps
