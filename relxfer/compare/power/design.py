"""The shape of a study as its analyses see it: languages per family, models, items per
language, questions per passage, seeds and the conditions compared with the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relxfer.spec.types import DataSpec, GroupRole, Spec, SyntheticSource

# Belebele passages carry 1.8 questions on average: holding out whole passages keeps about 2
# questions of a passage together; holding out single questions scatters them (about 1 each).
BELEBELE_QUESTIONS_PER_HELD_OUT_PASSAGE = 2


@dataclass(frozen=True)
class StudyDesign:
    n_related: int
    n_control: int
    n_models: int
    items_per_language: int
    questions_per_passage: int
    n_seeds: int = 1
    conditions: tuple[str, ...] = ("finetuned",)
    reference: str = "baseline"

    @property
    def n_languages(self) -> int:
        return self.n_related + self.n_control

    @property
    def n_passages(self) -> int:
        return -(-self.items_per_language // self.questions_per_passage)


def design_from_spec(spec: Spec, eval_items: Mapping[str, int]) -> StudyDesign:
    """The design `spec` runs, with `eval_items` (language -> evaluation items, as
    `relxfer.plan.study_data.summarize_study_data` counts them): the smallest count is used.
    Settings are read from the resolved spec (every default filled)."""
    related = sum(len(g.languages) for g in spec.groups if g.role is GroupRole.RELATED)
    control = sum(len(g.languages) for g in spec.groups if g.role is GroupRole.CONTROL)
    reference = spec.analysis.reference
    counts = [eval_items.get(code, 0) for code in spec.eval_languages]
    return StudyDesign(
        n_related=related,
        n_control=control,
        n_models=len(spec.models),
        items_per_language=min(counts) if counts else 0,
        questions_per_passage=_questions_per_passage(spec.data),
        n_seeds=len(spec.seeds),
        conditions=tuple(str(c) for c in spec.conditions if c != reference),
        reference=reference,
    )


def _questions_per_passage(data: DataSpec) -> int:
    if data.split.unit != "passage":
        return 1
    if isinstance(data.source, SyntheticSource):
        return data.source.questions_per_passage
    return BELEBELE_QUESTIONS_PER_HELD_OUT_PASSAGE
