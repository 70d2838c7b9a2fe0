"""The plain-text report: accuracies, per-language gains, then each analysis as one plain
sentence with its technical detail indented under it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd

from relxfer.compare.stats import RULE
from relxfer.compare.stats.accuracy import HIGH_PARSE_FAILURE, accuracy_summary
from relxfer.compare.stats.common import fmt_p_value

if TYPE_CHECKING:
    from relxfer.compare.report_types import Analysis, Report

WIDTH = 100
VERDICT_WORDS = {"above": "gain", "below": "loss", "none": "-", "inconclusive": "inconclusive"}


def render_text(report: Report) -> str:
    lines = [*_accuracy_section(report)]
    if not report.gains.empty:
        lines += ["", *_gains_section(report)]
    if report.family_gap:
        lines += ["", "Family gap: do related languages gain more than controls?"]
        lines += _analysis_lines(report.family_gap.values())
    other = [r for name, r in report.analyses() if not name.startswith("family_gap")]
    if other:
        lines += ["", "Other analyses:"] + _analysis_lines(other)
    lines += ["", *textwrap.wrap(f"Rule: {RULE}", WIDTH)]
    return "\n".join(lines)


def _accuracy_section(report: Report) -> list[str]:
    acc = report.accuracy.copy()
    several_seeds = acc.loc[acc["seed"] >= 0, "seed"].nunique() > 1
    acc["column"] = [
        c if s < 0 or not several_seeds else f"{c} seed {s}" for c, s in zip(acc["condition"], acc["seed"])
    ]
    acc["text"] = [
        f"{a:.3f} [{lo:.3f}, {hi:.3f}]{' !' if flag else ''}"
        for a, lo, hi, flag in zip(acc["accuracy"], acc["ci_low"], acc["ci_high"], acc["parse_failure_high"])
    ]
    wide = acc.pivot_table(index=["model", "role", "language"], columns="column", values="text", aggfunc="first")
    wide.columns.name = None
    lines = [
        "Accuracy (95% interval clustered by passage; baseline and CoT runs do not depend on the fine-tuning "
        "seed and have none)",
        wide.to_string(),
    ]
    if acc["parse_failure_high"].any():
        lines.append(
            f"! at least {100 * HIGH_PARSE_FAILURE:.0f}% of this run's reasoning texts gave no parseable "
            "answer; its accuracy comes from scoring the labels after that reasoning"
        )
    lines += textwrap.wrap(accuracy_summary(report.accuracy), WIDTH)
    return lines


def _gains_section(report: Report) -> list[str]:
    g = report.gains
    table = pd.DataFrame(
        {
            "model": g["model"],
            "seed": ["-" if s < 0 else str(s) for s in g["seed"]],
            "language": g["language"],
            "role": g["role"],
            "condition": g["condition"],
            "gain [95% CI]": [
                f"{x:+.3f} [{lo:+.3f}, {hi:+.3f}]" for x, lo, hi in zip(g["gain"], g["ci_low"], g["ci_high"])
            ],
            "b/c": [f"{b}/{c}" for b, c in zip(g["b"], g["c"])],
            "p": [fmt_p_value(p) for p in g["p_value"]],
            "p_holm": [fmt_p_value(p) for p in g["p_holm"]],
            "verdict": [VERDICT_WORDS[v] for v in g["verdict"]],
        }
    )
    if (g["seed"] < 0).all():
        table = table.drop(columns="seed")
    header = [
        f"Gains over {report.reference}, paired question by question (b/c: b questions went from right to wrong, c "
        f"from wrong to right; p: exact passage sign-flip test, McNemar's test for questions that share passages; "
        f"p_holm: Holm-adjusted across the languages of a model; verdict: by the rule at the end)",
    ]
    return [*textwrap.wrap(header[0], WIDTH), table.to_string(index=False)]


def _analysis_lines(results: Iterable[Analysis]) -> list[str]:
    lines: list[str] = []
    for result in results:
        lines += textwrap.wrap(result.summary, WIDTH, initial_indent="  ", subsequent_indent="  ")
        if detail := result.detail:
            lines += textwrap.wrap(detail, WIDTH, initial_indent="      ", subsequent_indent="      ")
    return lines
