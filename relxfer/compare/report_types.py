"""The report compare builds (report.py) and renders as text (render.py): its analyses, one
result object per analysis and condition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

import pandas as pd

from relxfer.compare.stats import BaselineGainResult, FamilyGapResult, MixedModelResult, TaskAlignmentResult
from relxfer.compare.stats.accuracy import parse_failure_warnings

Analysis: TypeAlias = FamilyGapResult | BaselineGainResult | MixedModelResult | TaskAlignmentResult


@dataclass
class Report:
    reference: str
    scale: str
    accuracy: pd.DataFrame
    gains: pd.DataFrame
    family_gap: dict[str, FamilyGapResult] = field(default_factory=dict)
    baseline_gain: dict[str, BaselineGainResult] = field(default_factory=dict)
    mixed_model: dict[str, MixedModelResult] = field(default_factory=dict)
    task_alignment: TaskAlignmentResult | None = None

    def analyses(self) -> list[tuple[str, Analysis]]:
        out: list[tuple[str, Analysis]] = [(f"family_gap[{c}]", r) for c, r in self.family_gap.items()]
        out += [(f"baseline_gain[{c}]", r) for c, r in self.baseline_gain.items()]
        out += [(f"mixed_model[{c}]", r) for c, r in self.mixed_model.items()]
        if self.task_alignment is not None:
            out.append(("task_alignment", self.task_alignment))
        return out

    def summaries(self) -> list[dict[str, str]]:
        """One entry per analysis, naming the analysis, its condition, reference and scale."""
        return [
            {
                "analysis": name.split("[")[0],
                "condition": result.condition,
                "reference": result.reference,
                "scale": result.scale,
                "summary": result.summary,
                "detail": result.detail,
            }
            for name, result in self.analyses()
        ]

    def warnings(self) -> list[str]:
        return parse_failure_warnings(self.accuracy) if not self.accuracy.empty else []
