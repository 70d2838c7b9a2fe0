"""The statistics of `relxfer compare`: pure functions from an item-level frame to tables and
result dataclasses. No MLflow, no printing.

Input: one row per (model, seed, condition, language, question_id) with columns model, seed,
condition, language, group, role ("related" | "control"), question_id, passage_id (the
cluster), gold, predicted (-1 = unparsed CoT answer), correct (0/1). Rows are paired across
conditions on model, seed, language and question_id.

Analyses (each in its own module; DESIGN.md "Statistics"):
- accuracy_table        accuracy per run, passage-clustered Wilson interval   (stats_accuracy)
- paired_gains          paired gain, McNemar, Holm across languages           (stats_accuracy)
- baseline_gain         gain vs baseline, naive and split-half slopes         (stats_baseline)
- family_gap            related-vs-control gap, languages as clusters (CR2),
                        exact permutation test                                (stats_family)
- mixed_model           item-level logistic mixed model, descriptive          (stats_mixed)
- task_alignment        fine-tuning gain vs CoT gain correlation              (stats_alignment)

Frame results carry a per-row `summary` column (and accuracy_summary / paired_gains_summary
give one line per table); dataclass results carry `summary`, `method` and `reason` (None when
the analysis ran) and `as_record()` for logging.
"""

from .stats_accuracy import (
    accuracy_summary,
    accuracy_table,
    clustered_wilson,
    mcnemar_test,
    paired_gains,
    paired_gains_summary,
)
from .stats_alignment import TaskAlignmentResult, task_alignment
from .stats_baseline import BaselineGainResult, baseline_gain
from .stats_cluster import OLSFit, ols
from .stats_family import FamilyGapResult, family_gap
from .stats_mixed import MixedModelResult, mixed_model

__all__ = [
    "accuracy_table", "accuracy_summary", "paired_gains", "paired_gains_summary", "mcnemar_test",
    "clustered_wilson", "baseline_gain", "BaselineGainResult", "family_gap", "FamilyGapResult",
    "mixed_model", "MixedModelResult", "task_alignment", "TaskAlignmentResult", "ols", "OLSFit",
]
