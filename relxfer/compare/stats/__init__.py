"""The statistics of `relxfer compare`: pure functions from an item-level frame to tables and
result dataclasses. No MLflow, no printing.

Input: one row per (model, seed, condition, language, question_id) with columns model, seed,
condition, language, group, role ("related" | "control"), question_id, passage_id (the
cluster), gold, predicted (the scored label), correct (0/1), optionally extracted (CoT: -1 =
no parseable answer) and seedless. Rows are paired across conditions on model, seed, language
and question_id (`data.py`).

Analyses, one module each (docs/statistics.md says what each computes and why):
- accuracy_table   accuracy per run, passage-clustered Wilson interval, parse failures  (accuracy)
- paired_gains     paired gain per model x language, exact passage sign-flip test,
                   Holm across languages                                  (paired, signflip)
- family_gap       related-minus-control gain difference within model, languages as
                   clusters (CR2), exact permutation test; cross-fitted baseline
                   adjustment as a sensitivity analysis        (family, family_fits, permutation)
- baseline_gain    gain vs baseline: measurement-error-corrected slope, with the
                   split-half and naive slopes as checks       (baseline, corrected_slope, measurement)
- mixed_model      item-level logistic mixed model, descriptive                        (mixed)
- task_alignment   fine-tuning gain vs CoT gain correlation                         (alignment)

Every verdict follows one rule (`common.RULE`, `common.conclusion`): a finding needs the 95%
interval and the exact test to agree. Frame results carry a per-row `summary` and `verdict`;
dataclass results carry `summary` (one plain sentence), `detail`, `method` and `reason` (None
when the analysis ran), and `as_record()` for logging.
"""

from relxfer.compare.stats.accuracy import accuracy_summary, accuracy_table
from relxfer.compare.stats.alignment import TaskAlignmentResult, task_alignment
from relxfer.compare.stats.baseline import baseline_gain
from relxfer.compare.stats.baseline_result import BaselineGainResult
from relxfer.compare.stats.cluster import OLSFit, ols
from relxfer.compare.stats.common import RULE
from relxfer.compare.stats.family import family_gap
from relxfer.compare.stats.family_result import FamilyGapResult
from relxfer.compare.stats.mixed import MixedModelResult, mixed_model
from relxfer.compare.stats.paired import (
    holm_adjust,
    mcnemar_test,
    paired_gains,
    paired_gains_summary,
)
from relxfer.compare.stats.signflip import signflip_p
from relxfer.evaluate.intervals import clustered_wilson

__all__ = [
    "accuracy_table",
    "accuracy_summary",
    "paired_gains",
    "paired_gains_summary",
    "mcnemar_test",
    "holm_adjust",
    "signflip_p",
    "clustered_wilson",
    "baseline_gain",
    "BaselineGainResult",
    "family_gap",
    "FamilyGapResult",
    "mixed_model",
    "MixedModelResult",
    "task_alignment",
    "TaskAlignmentResult",
    "ols",
    "OLSFit",
    "RULE",
]
