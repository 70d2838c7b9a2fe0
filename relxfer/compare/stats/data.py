"""Shape the item-level frame for the analyses: validate it, pair conditions item by item,
aggregate to model x language cells, and draw split-half passage partitions.

Input contract: one row per (model, seed, condition, language, question_id) with columns
model, seed, condition, language, group, role ("related" | "control"), question_id,
passage_id (the cluster), gold, predicted (the scored label), correct (0/1); optionally
`extracted` (CoT runs: the answer parsed from the reasoning, -1 when none could be; NaN or absent
for other runs) and `seedless` (True for a seedless run, baseline or CoT, repeated for every
seed of the study by `relxfer.compare.frame`). Two rows are paired when model, seed, language
and question_id match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from relxfer.errors import DataError

COLUMNS = (
    "model",
    "seed",
    "condition",
    "language",
    "group",
    "role",
    "question_id",
    "passage_id",
    "gold",
    "predicted",
    "correct",
)
OPTIONAL_COLUMNS = ("extracted", "seedless")
PAIR_KEYS = ["model", "seed", "language", "question_id"]
ROLES = ("related", "control")
SEEDLESS = -1  # the seed shown for a seedless run (as in the runner's cells.json)
# "n" and each condition -> counts per cell (rows) and passage or split (columns)
Counts = dict[str, npt.NDArray[np.float64]]


def validate_items(items: pd.DataFrame) -> pd.DataFrame:
    """Check the input contract and return the contract's columns and the optional ones present
    (a copy; `seedless` is added as False when absent).

    Raises DataError naming what is wrong: missing columns, an empty frame, roles other than
    related/control, non-0/1 `correct`, duplicated items, or a language with two roles.
    """
    missing = [c for c in COLUMNS if c not in items.columns]
    if missing:
        raise DataError(f"item frame lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    if items.empty:
        raise DataError("item frame is empty: no evaluation results to analyse")
    frame = items.loc[:, [*COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in items.columns)]].copy()
    frame["seedless"] = frame["seedless"].fillna(False).astype(bool) if "seedless" in frame else False
    bad_roles = sorted(set(frame["role"].unique()) - set(ROLES))
    if bad_roles:
        raise DataError(f"role must be 'related' or 'control', found {bad_roles}")
    if not frame["correct"].isin([0, 1]).all():
        raise DataError("column 'correct' must hold only 0 and 1")
    frame["correct"] = frame["correct"].astype(int)
    duplicated = frame.duplicated(["condition", *PAIR_KEYS])
    if duplicated.any():
        first = frame.loc[duplicated, ["condition", *PAIR_KEYS]].iloc[0].to_dict()
        raise DataError(f"{int(duplicated.sum())} duplicated item rows, e.g. {first}")
    roles_per_language = frame.groupby("language")["role"].nunique()
    mixed = roles_per_language.index[roles_per_language > 1].tolist()
    if mixed:
        raise DataError(f"language(s) {mixed} are labelled both related and control")
    return frame


def collapse_seedless(frame: pd.DataFrame, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """Seedless runs arrive once per seed of the study (copies); keep one copy of each, labelled
    seed -1 (`SEEDLESS`). With `conditions`, only when every row of those conditions is
    seedless (so a seedless reference stays paired with each seed of a seeded condition)."""
    rows = frame if conditions is None else frame[frame["condition"].isin(list(conditions))]
    if not rows["seedless"].any() or (conditions is not None and not rows["seedless"].all()):
        return frame
    chosen = frame["seedless"].copy()
    if conditions is not None:
        chosen &= frame["condition"].isin(list(conditions))
    keep = ~chosen | (frame["seed"] == frame["seed"].min())
    out = frame[keep].copy()
    out.loc[chosen[keep], "seed"] = SEEDLESS
    return out


def available_conditions(items: pd.DataFrame) -> list[str]:
    return sorted(items["condition"].unique().tolist())


def missing_conditions(items: pd.DataFrame, conditions: Sequence[str]) -> list[str]:
    """The requested conditions that have no rows."""
    present = set(items["condition"].unique())
    return [c for c in conditions if c not in present]


def require_conditions(items: pd.DataFrame, conditions: Sequence[str]) -> None:
    """Raise DataError when a requested condition has no rows."""
    absent = missing_conditions(items, conditions)
    if absent:
        raise DataError(f"condition(s) {absent} not in the items; available: {available_conditions(items)}")


def paired_wide(items: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """One row per (model, seed, language, question_id) answered under every one of
    `conditions`, with a 0/1 column per condition plus passage_id, group and role (taken from
    the first condition's row).

    Items missing from any condition are dropped, so every comparison is within-item.
    """
    conditions = list(conditions)
    sub = items[items["condition"].isin(conditions)]
    key = _codes(sub, PAIR_KEYS)
    condition = pd.Categorical(sub["condition"], categories=conditions).codes
    answers = np.full((int(key.max()) + 1 if len(key) else 0, len(conditions)), -1)
    answers[key, condition] = sub["correct"].to_numpy()
    first = (condition == 0) & (answers[key] >= 0).all(axis=1)
    wide = sub.loc[first, [*PAIR_KEYS, "passage_id", "group", "role"]].reset_index(drop=True)
    for j, name in enumerate(conditions):
        wide[name] = answers[key[first], j]
    return wide


def cell_table(wide: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """Aggregate paired items to model x language cells, pooling seeds.

    Seeds are repeated fine-tuning runs of the same model, not new languages or models, so a
    cell sums its items over seeds: n = paired items (x seeds), k_<condition> = correct answers,
    acc_<condition> = k / n. Rows are sorted by model, then language.
    """
    if wide.empty:
        columns = [
            "model",
            "language",
            "group",
            "role",
            "n",
            "n_passages",
            *[f"k_{c}" for c in conditions],
            *[f"acc_{c}" for c in conditions],
        ]
        return pd.DataFrame(columns=columns)
    cell = _codes(wide, ["model", "language"])
    n_cells = int(cell.max()) + 1
    passage = _codes(wide, ["passage_id"])
    firsts = np.unique(cell, return_index=True)[1]
    cells = wide.iloc[firsts][["model", "language", "group", "role"]].reset_index(drop=True)
    cells["n"] = np.bincount(cell, minlength=n_cells)
    cell_passages = np.unique(cell * (int(passage.max()) + 1) + passage) // (int(passage.max()) + 1)
    cells["n_passages"] = np.bincount(cell_passages, minlength=n_cells)
    for c in conditions:
        cells[f"k_{c}"] = np.bincount(cell, weights=wide[c].to_numpy(), minlength=n_cells).astype(int)
    for c in conditions:
        cells[f"acc_{c}"] = cells[f"k_{c}"] / cells["n"]
    return cells.sort_values(["model", "language"], ignore_index=True)


def gain_cells(frame: pd.DataFrame, reference: str, condition: str, scale: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(wide, cells): the paired items (`paired_wide`) and their model x language cells
    (`cell_table`) with `baseline` and `gain` (condition minus reference) on `scale`."""
    wide = paired_wide(frame, [reference, condition])
    cells = cell_table(wide, [reference, condition])
    cells["baseline"] = on_scale(cells[f"k_{reference}"], cells["n"], scale)
    cells["gain"] = on_scale(cells[f"k_{condition}"], cells["n"], scale) - cells["baseline"]
    return wide, cells


def _codes(frame: pd.DataFrame, columns: Sequence[str]) -> npt.NDArray[np.intp]:
    """One integer per distinct combination of `columns` (0..k-1, in order of appearance)."""
    if frame.empty:
        return np.zeros(0, dtype=int)
    codes = [pd.factorize(frame[c])[0] for c in columns]
    dims = [int(c.max()) + 1 for c in codes]
    return np.asarray(pd.factorize(np.ravel_multi_index(codes, dims))[0], dtype=np.intp)


def logit_accuracy(k: npt.ArrayLike, n: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Empirical logit log((k + 0.5) / (n - k + 0.5)): finite at 0% and 100% accuracy."""
    correct = np.asarray(k, dtype=float)
    total = np.asarray(n, dtype=float)
    return np.asarray(np.log((correct + 0.5) / (total - correct + 0.5)), dtype=np.float64)


def on_scale(k: npt.ArrayLike, n: npt.ArrayLike, scale: str) -> npt.NDArray[np.float64]:
    """Cell accuracy k/n on the raw scale, or its empirical logit."""
    if scale == "raw":
        return np.asarray(np.asarray(k, dtype=float) / np.asarray(n, dtype=float), dtype=np.float64)
    if scale == "logit":
        return logit_accuracy(k, n)
    raise ValueError(f"scale must be 'raw' or 'logit', not {scale!r}")


def split_half_counts(
    wide: pd.DataFrame, cells: pd.DataFrame, conditions: Sequence[str], n_splits: int, seed: int
) -> tuple[Counts, Counts]:
    """Counts of the two halves of `n_splits` random passage partitions, per cell.

    In every split each language's passages are shuffled and cut into halves A and B (the same
    cut for every model in that language, so the halves are parallel across models). Returns
    (half_a, half_b): dicts mapping "n" and each condition to arrays of shape
    (len(cells), n_splits) holding item counts and correct counts, rows in `cells` order.
    Raises DataError when a language has fewer than 2 passages.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, not {n_splits}")
    rng = np.random.default_rng(seed)
    keys = ["n", *conditions]
    half_a = {key: np.zeros((len(cells), n_splits)) for key in keys}
    half_b = {key: np.zeros((len(cells), n_splits)) for key in keys}
    totals, row, passage, passages_of = passage_totals(wide, cells, conditions)
    for language in sorted(passages_of):
        passages = passages_of[language]
        if len(passages) < 2:
            raise DataError(f"language {language} has {len(passages)} passage(s); a split needs 2")
        masks = _half_masks(rng, len(passages), n_splits)  # (n_splits, n_passages)
        rows = np.flatnonzero(cells["language"].to_numpy() == language)
        for key in keys:
            matrix = totals[key][np.ix_(rows, passages)]
            in_a = matrix @ masks.T
            half_a[key][rows] = in_a
            half_b[key][rows] = matrix.sum(axis=1, keepdims=True) - in_a
    return half_a, half_b


def passage_totals(
    wide: pd.DataFrame, cells: pd.DataFrame, conditions: Sequence[str]
) -> tuple[Counts, npt.NDArray[np.intp], npt.NDArray[np.intp], dict[str, npt.NDArray[np.intp]]]:
    """Per cell and passage: item counts ("n") and correct counts per condition, as dense arrays
    of shape (len(cells), passages), rows in `cells` order. Returns (totals, row of each item,
    passage of each item, {language: passage columns it uses})."""
    cell_index = pd.MultiIndex.from_arrays([cells["model"], cells["language"]])
    row = cell_index.get_indexer(pd.MultiIndex.from_arrays([wide["model"], wide["language"]]))
    passage, names = pd.factorize(wide["passage_id"])
    shape = (len(cells), len(names))
    flat = row * len(names) + passage
    totals = {"n": np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape).astype(float)}
    for c in conditions:
        totals[c] = np.bincount(flat, weights=wide[c].to_numpy(float), minlength=shape[0] * shape[1]).reshape(shape)
    languages = wide["language"].to_numpy()
    passages_of = {lang: np.unique(passage[languages == lang]) for lang in pd.unique(languages)}
    return totals, row, passage, passages_of


def _half_masks(rng: np.random.Generator, n_passages: int, n_splits: int) -> np.ndarray:
    """Boolean-as-float masks choosing floor(P/2) passages for half A in each split."""
    order = np.argsort(rng.random((n_splits, n_passages)), axis=1)
    masks = np.zeros((n_splits, n_passages))
    np.put_along_axis(masks, order[:, : n_passages // 2], 1.0, axis=1)
    return masks
