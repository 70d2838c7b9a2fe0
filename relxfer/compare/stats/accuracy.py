"""Per-run accuracy with passage-clustered intervals and the CoT parse-failure rate."""

from __future__ import annotations

import numpy as np
import pandas as pd

from relxfer.compare.stats.common import fmt_points, seed_label
from relxfer.compare.stats.data import collapse_seedless, validate_items
from relxfer.evaluate.intervals import clustered_wilson, design_effect

RUN_KEYS = ["model", "seed", "language", "condition"]
# A condition whose reasoning texts failed to commit to an answer this often is flagged: its
# accuracy then comes from scoring the labels after unfinished reasoning, not from the answers.
HIGH_PARSE_FAILURE = 0.10


def accuracy_table(items: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Accuracy of every evaluation run (model x seed x language x condition), with a clustered
    interval. A seedless run (baseline, CoT) appears once, with seed -1.

    Questions that share a passage are correlated, so the interval treats passages as clusters.
    Method (a Korn & Graubard 1998 style interval): the CR1 cluster-robust variance of the
    mean, G/(G-1) * sum_g (S_g - p n_g)^2 / n^2 over the G passages, gives a design effect
    deff = var_cluster / (p(1-p)/n), floored at 1 so clustering never narrows the interval;
    the Wilson score interval is then computed on the effective sample size n / deff, further
    shrunk by (z / t_{G-1})^2 so the critical value reflects G-1 degrees of freedom. Wilson keeps
    the interval inside [0, 1] and sensible at 0% and 100% (where deff is taken as 1).

    Columns: model, seed, language, group, role, condition, accuracy, n_items, n_passages,
    ci_low, ci_high, design_effect, parse_failure_rate (CoT runs: share of reasoning texts with
    no parseable answer, `extracted == -1`; NaN for runs that generate no reasoning),
    parse_failure_high (rate >= HIGH_PARSE_FAILURE), summary.
    """
    frame = collapse_seedless(validate_items(items))
    has_extraction = frame["extracted"].notna() if "extracted" in frame else pd.Series(False, index=frame.index)
    frame["parsed_known"] = has_extraction.astype(int)
    frame["unparsed"] = (has_extraction & (frame.get("extracted", 0) == -1)).astype(int)
    passages = (
        frame.groupby([*RUN_KEYS, "passage_id"])
        .agg(s=("correct", "sum"), m=("correct", "size"), u=("unparsed", "sum"), k=("parsed_known", "sum"))
        .reset_index()
    )
    rows = []
    for key, block in passages.groupby(RUN_KEYS, sort=True):
        n = block["m"].sum()
        p = block["s"].sum() / n
        deff = design_effect(block["s"].to_numpy(), block["m"].to_numpy(), p)
        low, high = clustered_wilson(p, n, deff, len(block), level)
        failure = block["u"].sum() / n if block["k"].sum() == n else np.nan
        rows.append((*key, p, n, len(block), low, high, deff, failure))
    table = pd.DataFrame(
        rows,
        columns=[
            *RUN_KEYS,
            "accuracy",
            "n_items",
            "n_passages",
            "ci_low",
            "ci_high",
            "design_effect",
            "parse_failure_rate",
        ],
    )
    table["parse_failure_high"] = table["parse_failure_rate"] >= HIGH_PARSE_FAILURE
    table = attach_labels(table, frame)
    table["summary"] = [
        f"{r.model}{seed_label(r.seed)}, {r.language}, {r.condition}: {fmt_points(r.accuracy)}% "
        f"(95% CI {fmt_points(r.ci_low)} to {fmt_points(r.ci_high)}; "
        f"{r.n_items} questions in {r.n_passages} passages)"
        + (
            f"; {fmt_points(r.parse_failure_rate)}% of the reasoning texts gave no parseable answer"
            if r.parse_failure_high
            else ""
        )
        for r in table.itertuples()
    ]
    order = ["model", "seed", "language", "group", "role", "condition"]
    return table[order + [c for c in table.columns if c not in order]]


def accuracy_summary(table: pd.DataFrame) -> str:
    """One line over an accuracy_table: range of accuracies, typical interval width, and the
    conditions whose parse-failure rate is high."""
    lo, hi = table.loc[table["accuracy"].idxmin()], table.loc[table["accuracy"].idxmax()]
    width = (table["ci_high"] - table["ci_low"]).median()
    line = (
        f"Accuracy ranged from {fmt_points(lo.accuracy)}% ({lo.model}, {lo.language}, {lo.condition}) "
        f"to {fmt_points(hi.accuracy)}% ({hi.model}, {hi.language}, {hi.condition}) over {len(table)} runs; "
        f"a typical 95% interval spans {fmt_points(width)} points."
    )
    warnings = parse_failure_warnings(table)
    return " ".join([line, *warnings])


def parse_failure_warnings(table: pd.DataFrame) -> list[str]:
    """One sentence per condition with runs at or above HIGH_PARSE_FAILURE."""
    out = []
    for condition, block in table[table["parse_failure_high"]].groupby("condition"):
        runs = table[table["condition"] == condition]
        out.append(
            f"Warning: {condition}: {len(block)} of {len(runs)} runs had no parseable answer in at least "
            f"{fmt_points(HIGH_PARSE_FAILURE)}% of their reasoning texts (up to "
            f"{fmt_points(block['parse_failure_rate'].max())}%); their accuracy comes from scoring the "
            f"labels after reasoning that did not reach an answer."
        )
    return out


def attach_labels(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    labels = frame.drop_duplicates("language").set_index("language")[["group", "role"]]
    return table.join(labels, on="language")
