"""Hold out evaluation questions by question id: the same ids in every language, none of which
may reach training in any language (Belebele is parallel, so a question held out in Hebrew but
trained on in Arabic would leak its answer across languages).

Two units of holding out:

- unit="question" (the default, the paper's choice): draw N question ids. Belebele has 488
  passages with one or two questions each, so a held-out question's passage may still be read
  in training through its sibling question. `HeldOutSplit.shared_passages` lists those passages.
- unit="passage" (stricter): hold out whole passages, all their questions, until exactly N
  question ids are held out; no held-out passage is seen in training, and the leakage guard
  checks passages as well as questions.

In both units `n_held_out` counts question ids, so evaluation sizes agree between them.
The draw is `random.Random(seed)` over sorted ids: the same on every machine and Python run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from relxfer.data.items import MCItem
from relxfer.errors import DataError, SpecError

UNITS = ("question", "passage")
_LISTED = 5  # ids named in an error message before "and N more"


@dataclass(frozen=True)
class HeldOutSplit:
    """The held-out question ids, and what the split saw while drawing them.

    `n_available`: question ids the draw could choose from (present in every language; in
    passage mode, those in passages complete in every language). `missing_ids`: per language,
    ids present in some other considered language but not in this one (empty for parallel data).
    """

    held_out_ids: list[str]
    held_out_passages: list[str]
    unit: str
    seed: int
    n_available: int
    missing_ids: dict[str, list[str]] = field(default_factory=dict)
    shared_passages: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """Short sha256 of the held-out ids, to log which questions a run evaluated on."""
        return hashlib.sha256("\n".join(self.held_out_ids).encode("utf-8")).hexdigest()[:16]

    def _passages_kept_out(self) -> list[str]:
        return self.held_out_passages if self.unit == "passage" else []

    def training_items(
        self, items_by_language: Mapping[str, Sequence[MCItem]], train_languages: Sequence[str]
    ) -> list[MCItem]:
        """training_items() with this split's held-out ids (and passages, in passage mode)."""
        return training_items(
            items_by_language, train_languages, self.held_out_ids, held_out_passages=self._passages_kept_out()
        )

    def evaluation_items(
        self, items_by_language: Mapping[str, Sequence[MCItem]], eval_languages: Sequence[str]
    ) -> dict[str, list[MCItem]]:
        """evaluation_items() with this split's held-out ids."""
        return evaluation_items(items_by_language, eval_languages, self.held_out_ids)

    def assert_no_leakage(self, train_items: Iterable[MCItem]) -> None:
        """assert_no_leakage() with this split's held-out ids (and passages, in passage mode)."""
        assert_no_leakage(train_items, self.held_out_ids, held_out_passages=self._passages_kept_out())


def held_out_split(
    items_by_language: Mapping[str, Sequence[MCItem]],
    n_held_out: int,
    seed: int,
    unit: str = "question",
) -> HeldOutSplit:
    """Draw `n_held_out` question ids present in every language of `items_by_language`."""
    if unit not in UNITS:
        raise SpecError(f"unknown held-out unit {unit!r}; use 'question' or 'passage'")
    if n_held_out < 1:
        raise SpecError(f"held-out size must be at least 1, got {n_held_out}")
    if not items_by_language:
        raise DataError("no languages to draw held-out questions from")

    ids_by_language = {lang: {item.question_id for item in items} for lang, items in items_by_language.items()}
    all_ids = set().union(*ids_by_language.values())
    common = set.intersection(*ids_by_language.values())
    missing = {lang: sorted(all_ids - ids) for lang, ids in ids_by_language.items() if all_ids - ids}
    passage_of = _passage_of(items_by_language)
    rng = random.Random(seed)
    where = ", ".join(items_by_language)

    if unit == "question":
        if n_held_out > len(common):
            raise DataError(
                f"cannot hold out {n_held_out} question ids: only {len(common)} are present in every language ({where})"
            )
        held = rng.sample(sorted(common), n_held_out)
        n_available = len(common)
    else:
        held, n_available = _draw_passages(passage_of, all_ids, common, n_held_out, rng, where)

    held_set = set(held)
    held_passages = sorted({passage_of[qid] for qid in held})
    shared = sorted({passage_of[qid] for qid in all_ids - held_set} & set(held_passages))
    return HeldOutSplit(
        held_out_ids=sorted(held),
        held_out_passages=held_passages,
        unit=unit,
        seed=seed,
        n_available=n_available,
        missing_ids=missing,
        shared_passages=shared,
    )


def _passage_of(items_by_language: Mapping[str, Sequence[MCItem]]) -> dict[str, str]:
    """{question id: passage id}, checked to agree across languages."""
    passage_of: dict[str, str] = {}
    for lang, items in items_by_language.items():
        for item in items:
            known = passage_of.setdefault(item.question_id, item.passage_id)
            if known != item.passage_id:
                raise DataError(
                    f"question {item.question_id!r} belongs to passage {item.passage_id!r} "
                    f"in {lang} but to {known!r} in another language"
                )
    return passage_of


def _draw_passages(
    passage_of: dict[str, str], all_ids: set[str], common: set[str], n_held_out: int, rng: random.Random, where: str
) -> tuple[list[str], int]:
    """Whole passages, in seeded order, that add up to exactly `n_held_out` question ids.

    A passage is eligible when every question it has in any language is present in every
    language. A passage that would overshoot is skipped, so the total lands on N exactly.
    """
    questions_of: dict[str, list[str]] = {}
    for qid in sorted(all_ids):
        questions_of.setdefault(passage_of[qid], []).append(qid)
    eligible = sorted(p for p, qids in questions_of.items() if common.issuperset(qids))
    n_available = sum(len(questions_of[p]) for p in eligible)
    if n_held_out > n_available:
        raise DataError(
            f"cannot hold out {n_held_out} question ids as whole passages: only {n_available} "
            f"(in {len(eligible)} passages) are present in every language ({where})"
        )
    rng.shuffle(eligible)
    held: list[str] = []
    for passage in eligible:
        if len(held) + len(questions_of[passage]) <= n_held_out:
            held.extend(questions_of[passage])
        if len(held) == n_held_out:
            return held, n_available
    raise DataError(
        f"whole passages cannot add up to exactly {n_held_out} question ids "
        f"(reached {len(held)}); choose another held-out size or seed"
    )


def training_items(
    items_by_language: Mapping[str, Sequence[MCItem]],
    train_languages: Sequence[str],
    held_out_ids: Collection[str],
    held_out_passages: Collection[str] = (),
) -> list[MCItem]:
    """Items of the training languages, in language then file order, minus the held-out ids
    (and minus every question on a held-out passage, when `held_out_passages` is given)."""
    held, passages = set(held_out_ids), set(held_out_passages)
    return [
        item
        for lang in train_languages
        for item in _items_of(items_by_language, lang)
        if item.question_id not in held and item.passage_id not in passages
    ]


def evaluation_items(
    items_by_language: Mapping[str, Sequence[MCItem]],
    eval_languages: Sequence[str],
    held_out_ids: Collection[str],
) -> dict[str, list[MCItem]]:
    """{language: its held-out items, in file order}; DataError when a language lacks any of
    the held-out ids (every language must be evaluated on the same questions)."""
    held = set(held_out_ids)
    by_language = {}
    for lang in eval_languages:
        items = [item for item in _items_of(items_by_language, lang) if item.question_id in held]
        absent = held - {item.question_id for item in items}
        if absent:
            raise DataError(
                f"{lang} lacks {len(absent)} of the {len(held)} held-out question ids: {_listing(sorted(absent))}"
            )
        by_language[lang] = items
    return by_language


def assert_no_leakage(
    train_items: Iterable[MCItem],
    held_out_ids: Collection[str],
    held_out_passages: Collection[str] = (),
) -> None:
    """DataError naming every held-out question id (and, when `held_out_passages` is given,
    every held-out passage) that appears in a training item, with the languages it appears in."""
    held, passages = set(held_out_ids), set(held_out_passages)
    leaked_ids: dict[str, set[str]] = {}
    leaked_passages: dict[str, set[str]] = {}
    for item in train_items:
        if item.question_id in held:
            leaked_ids.setdefault(item.question_id, set()).add(item.language)
        elif item.passage_id in passages:
            leaked_passages.setdefault(item.passage_id, set()).add(item.language)
    problems = []
    if leaked_ids:
        problems.append(_leak_report(leaked_ids, "held-out question id"))
    if leaked_passages:
        problems.append(_leak_report(leaked_passages, "held-out passage"))
    if problems:
        raise DataError("leakage: " + "; ".join(problems))


def _leak_report(leaked: dict[str, set[str]], what: str) -> str:
    """'2 held-out question ids in training items: a#1 (arb_Arab, eng_Latn), b#2 (fra_Latn)'"""
    named = [f"{key} ({', '.join(sorted(leaked[key]))})" for key in sorted(leaked)]
    plural = "s" if len(leaked) > 1 else ""
    return f"{len(leaked)} {what}{plural} in training items: {_listing(named)}"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def _items_of(items_by_language: Mapping[str, Sequence[MCItem]], lang: str) -> Sequence[MCItem]:
    if lang not in items_by_language:
        raise DataError(f"no items loaded for language {lang!r}; loaded: {', '.join(items_by_language)}")
    return items_by_language[lang]
