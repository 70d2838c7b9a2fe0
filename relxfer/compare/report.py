"""Assemble the comparison report from an item-level frame: accuracy table, paired gains, the
family-gap, baseline-gain, mixed-model and task-alignment analyses, plots, and renderings as
JSON or CSV files (the plain-text rendering is `render.py`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from relxfer.compare import plots
from relxfer.compare.render import render_text
from relxfer.compare.report_types import Analysis, Report
from relxfer.compare.stats import (
    RULE,
    accuracy_table,
    baseline_gain,
    family_gap,
    mixed_model,
    paired_gains,
    task_alignment,
)

__all__ = [
    "Analysis",
    "Report",
    "build_report",
    "headline_metrics",
    "to_dict",
    "to_json",
    "render_text",
    "write_outputs",
    "write_plots",
]


def build_report(items: pd.DataFrame, reference: str = "baseline", scale: str = "raw", mixed: bool = True) -> Report:
    """Every analysis of `relxfer compare`. `scale` ("raw": accuracy points, "logit") applies to
    the family gap and the baseline-gain slope."""
    conditions = sorted(c for c in items["condition"].unique() if c != reference)
    has_reference = reference in set(items["condition"])
    gains = [paired_gains(items, c, reference=reference) for c in conditions] if has_reference else []
    report = Report(
        reference=reference,
        scale=scale,
        accuracy=accuracy_table(items),
        gains=pd.concat(gains, ignore_index=True) if gains else pd.DataFrame(),
    )
    if not has_reference:
        return report
    for condition in conditions:
        report.family_gap[condition] = family_gap(items, condition, reference=reference, scale=scale)
        report.baseline_gain[condition] = baseline_gain(items, condition, reference=reference, scale=scale)
        if mixed:
            report.mixed_model[condition] = mixed_model(items, condition, reference=reference)
    if {"finetuned", "cot"} <= set(conditions):
        report.task_alignment = task_alignment(items, reference=reference)
    return report


def headline_metrics(report: Report) -> dict[str, float]:
    """The numbers a comparison run logs: family gap (and its sensitivity analysis), slopes and
    the alignment correlation."""
    metrics: dict[str, float | None] = {}
    for condition, r in report.family_gap.items():
        metrics |= {
            f"family_gap_{condition}": r.estimate,
            f"family_gap_ci_low_{condition}": r.ci_low,
            f"family_gap_ci_high_{condition}": r.ci_high,
            f"family_gap_perm_p_{condition}": r.perm_p_value,
            f"family_gap_adjusted_{condition}": r.adjusted_estimate,
            f"family_gap_raw_{condition}": r.raw_gap,
        }
    for condition, slopes in report.baseline_gain.items():
        metrics |= {
            f"slope_corrected_{condition}": slopes.corrected_slope,
            f"slope_detectable_{condition}": slopes.detectable_slope,
            f"slope_split_half_{condition}": slopes.split_half_slope,
            f"slope_naive_{condition}": slopes.naive_slope,
        }
    if report.task_alignment is not None:
        metrics |= {
            "task_alignment_r": report.task_alignment.pearson_r,
            "task_alignment_rho": report.task_alignment.spearman_rho,
        }
    return {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


# --- JSON and files --------------------------------------------------------------------------

ACCURACY_COLUMNS = [
    "model",
    "seed",
    "language",
    "group",
    "role",
    "condition",
    "accuracy",
    "n_items",
    "ci_low",
    "ci_high",
    "parse_failure_rate",
    "parse_failure_high",
]
GAIN_COLUMNS = [
    "model",
    "seed",
    "language",
    "role",
    "condition",
    "reference",
    "acc_ref",
    "acc_cond",
    "gain",
    "ci_low",
    "ci_high",
    "b",
    "c",
    "test",
    "p_value",
    "p_holm",
    "verdict",
]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    if frame.empty:
        return []
    return [{k: _clean(v) for k, v in row.items()} for row in frame[columns].to_dict(orient="records")]


def to_dict(report: Report) -> dict[str, Any]:
    """Everything as plain data. A seedless run (baseline, CoT) has seed -1, as in cells.json."""
    return {
        "reference": report.reference,
        "scale": report.scale,
        "rule": RULE,
        "accuracy": _records(report.accuracy, ACCURACY_COLUMNS),
        "gains": _records(report.gains, GAIN_COLUMNS),
        "analyses": {name: {k: _clean(v) for k, v in result.as_record().items()} for name, result in report.analyses()},
        "summaries": report.summaries(),
        "warnings": report.warnings(),
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2)


def write_outputs(report: Report, out_dir: Path) -> list[Path]:
    """CSV tables, report.json, report.txt and the PNG plots into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    report.accuracy.to_csv(out_dir / "accuracy.csv", index=False)
    written.append(out_dir / "accuracy.csv")
    if not report.gains.empty:
        report.gains.to_csv(out_dir / "gains.csv", index=False)
        written.append(out_dir / "gains.csv")
    (out_dir / "report.json").write_text(to_json(report))
    (out_dir / "report.txt").write_text(render_text(report) + "\n")
    written += [out_dir / "report.json", out_dir / "report.txt"]
    written += write_plots(report, out_dir)
    return written


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    written = []
    for condition, fit in report.family_gap.items():
        if fit.reason is None and not fit.cells.empty:
            written.append(plots.plot_family_gap(fit, out_dir / f"family_gap_{condition}.png"))
    for condition, slopes in report.baseline_gain.items():
        if slopes.reason is None and not slopes.cells.empty:
            written.append(
                plots.plot_gain_vs_baseline(slopes.cells, out_dir / f"gain_vs_baseline_{condition}.png", fit=slopes)
            )
    if not report.gains.empty:
        for condition, block in report.gains.groupby("condition"):
            written.append(plots.plot_language_gains(block, out_dir / f"language_gains_{condition}.png"))
    alignment = report.task_alignment
    if alignment is not None and alignment.reason is None and not alignment.cells.empty:
        written.append(plots.plot_ft_vs_cot(alignment.cells, out_dir / "ft_gain_vs_cot_gain.png", fit=alignment))
    return written
