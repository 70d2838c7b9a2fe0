"""Assemble the comparison report from an item-level frame: accuracy table, paired gains, the
baseline-gain, family-gap, mixed-model and task-alignment analyses, plots, and renderings as a
plain-text table, JSON or CSV files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots
from .stats import (
    accuracy_table,
    baseline_gain,
    family_gap,
    mixed_model,
    paired_gains,
    task_alignment,
)
from .stats_common import AnalysisResult


@dataclass
class Report:
    reference: str
    accuracy: pd.DataFrame
    gains: pd.DataFrame
    baseline_gain: dict[str, AnalysisResult] = field(default_factory=dict)
    family_gap: dict[str, AnalysisResult] = field(default_factory=dict)
    mixed_model: dict[str, AnalysisResult] = field(default_factory=dict)
    task_alignment: AnalysisResult | None = None

    def analyses(self) -> list[tuple[str, AnalysisResult]]:
        out = []
        for name in ("family_gap", "baseline_gain", "mixed_model"):
            out += [(f"{name}[{condition}]", result) for condition, result in getattr(self, name).items()]
        if self.task_alignment is not None:
            out.append(("task_alignment", self.task_alignment))
        return out

    def summaries(self) -> list[str]:
        return [result.summary or f"{name}: {result.reason}" for name, result in self.analyses()]


def build_report(items: pd.DataFrame, reference: str = "baseline", scale: str = "logit", mixed: bool = True) -> Report:
    conditions = sorted(c for c in items["condition"].unique() if c != reference)
    has_reference = reference in set(items["condition"])
    gains = [paired_gains(items, c, reference=reference) for c in conditions] if has_reference else []
    report = Report(
        reference=reference,
        accuracy=accuracy_table(items),
        gains=pd.concat(gains, ignore_index=True) if gains else pd.DataFrame(),
    )
    if not has_reference:
        return report
    for condition in conditions:
        report.family_gap[condition] = family_gap(items, condition, reference=reference, scale=scale)
        report.baseline_gain[condition] = baseline_gain(items, condition, reference=reference)
        if mixed:
            report.mixed_model[condition] = mixed_model(items, condition, reference=reference)
    if {"finetuned", "cot"} <= set(conditions):
        report.task_alignment = task_alignment(items, reference=reference)
    return report


def headline_metrics(report: Report) -> dict[str, float]:
    """The numbers a comparison run logs: family gap, slopes and the alignment correlation."""
    metrics = {}
    for condition, r in report.family_gap.items():
        metrics |= {f"family_gap_{condition}": r.estimate, f"family_gap_p_{condition}": r.p_value,
                    f"family_gap_perm_p_{condition}": r.perm_p_value, f"family_gap_raw_{condition}": r.raw_gap}
    for condition, r in report.baseline_gain.items():
        metrics |= {f"slope_naive_{condition}": r.naive_slope, f"slope_split_half_{condition}": r.split_half_slope}
    if report.task_alignment is not None:
        metrics |= {"task_alignment_r": report.task_alignment.pearson_r,
                    "task_alignment_rho": report.task_alignment.spearman_rho}
    return {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


# --- renderings ---------------------------------------------------------------------------

ACCURACY_COLUMNS = ["model", "seed", "language", "group", "role", "condition", "accuracy", "n_items", "ci_low", "ci_high"]
GAIN_COLUMNS = ["model", "seed", "language", "role", "condition", "acc_ref", "acc_cond", "gain", "ci_low", "ci_high",
                "b", "c", "test", "p_value", "p_holm"]


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    if frame.empty:
        return []
    return [{k: _clean(v) for k, v in row.items()} for row in frame[columns].to_dict(orient="records")]


def to_dict(report: Report) -> dict:
    return {
        "reference": report.reference,
        "accuracy": _records(report.accuracy, ACCURACY_COLUMNS),
        "gains": _records(report.gains, GAIN_COLUMNS),
        "analyses": {name: {k: _clean(v) for k, v in result.as_record().items()} for name, result in report.analyses()},
        "summaries": report.summaries(),
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2)


def render_text(report: Report) -> str:
    """The plain-text report: accuracy per model x language x condition, gains, then one
    plain-language line per analysis."""
    lines = ["Accuracy (95% interval clustered by passage)"]
    acc = report.accuracy.copy()
    acc["accuracy"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(acc["accuracy"], acc["ci_low"], acc["ci_high"])]
    wide = acc.pivot_table(index=["model", "seed", "role", "language"], columns="condition", values="accuracy", aggfunc="first")
    lines.append(wide.to_string())
    if not report.gains.empty:
        lines += ["", f"Gains over {report.reference} (paired; McNemar, Holm across languages)"]
        g = report.gains
        table = pd.DataFrame({
            "model": g["model"], "seed": g["seed"], "language": g["language"], "role": g["role"],
            "condition": g["condition"],
            "gain": [f"{x:+.3f} [{lo:+.3f}, {hi:+.3f}]" for x, lo, hi in zip(g["gain"], g["ci_low"], g["ci_high"])],
            "b/c": [f"{b}/{c}" for b, c in zip(g["b"], g["c"])],
            "p": [f"{p:.3g}" for p in g["p_value"]],
            "p_holm": [f"{p:.3g}" for p in g["p_holm"]],
        })
        lines.append(table.to_string(index=False))
        lines += ["", "Family gap (related minus control gain):"]
        for condition, result in report.family_gap.items():
            raw = "n/a" if result.raw_gap is None else f"{result.raw_gap:+.3f}"
            lines.append(f"  {condition}: raw mean gap {raw}; {result.summary or result.reason}")
    other = [f"{name}: {r.summary or r.reason}" for name, r in report.analyses() if not name.startswith("family_gap")]
    if other:
        lines += ["", "Other analyses:"] + [f"  {s}" for s in other]
    return "\n".join(lines)


def write_outputs(report: Report, out_dir: Path) -> list[Path]:
    """CSV tables, report.json and the PNG plots into `out_dir`; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    report.accuracy.to_csv(out_dir / "accuracy.csv", index=False)
    written.append(out_dir / "accuracy.csv")
    if not report.gains.empty:
        report.gains.to_csv(out_dir / "gains.csv", index=False)
        written.append(out_dir / "gains.csv")
    (out_dir / "report.json").write_text(to_json(report))
    written.append(out_dir / "report.json")
    written += write_plots(report, out_dir)
    return written


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    written = []
    for condition, fit in report.baseline_gain.items():
        if fit.reason is None and not fit.cells.empty:
            written.append(plots.plot_gain_vs_baseline(fit.cells, out_dir / f"gain_vs_baseline_{condition}.png", fit=fit))
    if not report.gains.empty:
        for condition, block in report.gains.groupby("condition"):
            written.append(plots.plot_language_gains(block, out_dir / f"language_gains_{condition}.png"))
    alignment = report.task_alignment
    if alignment is not None and alignment.reason is None and not alignment.cells.empty:
        written.append(plots.plot_ft_vs_cot(alignment.cells, out_dir / "ft_gain_vs_cot_gain.png", fit=alignment))
    return written
