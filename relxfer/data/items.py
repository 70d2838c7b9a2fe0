"""The one record type every data source produces: a Belebele-like multiple-choice item."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice reading-comprehension question in one language.

    `question_id` is shared by the parallel versions of a question in every language
    (for Belebele: f"{link}#{question_number}"); `passage_id` groups the questions that read the
    same passage (for Belebele: `link`), the cluster for interval estimates.
    `gold` is the 0-based index of the correct option.
    """

    question_id: str
    passage_id: str
    language: str
    passage: str
    question: str
    options: tuple[str, ...]
    gold: int
