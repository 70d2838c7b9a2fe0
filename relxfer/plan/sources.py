"""One loader per kind of data source, found by the source's class: a new kind is a new entry in
`LOADERS`, never a new branch in the code that builds a study's data.

A loader gives the items of the training split and of the evaluation split, per language (the
same mapping when the set has one split and question ids are held out of it), the source's
provenance URI and content digest, and the directory a local source reads (its identity in cell
keys is the digest of its items, not its path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relxfer.data import synthetic
from relxfer.data.items import MCItem
from relxfer.data.parallel import Columns, ParallelDeclaration, load_parallel
from relxfer.data.prompts import PRESETS
from relxfer.spec.types import BelebeleSource, DataSource, ParallelSource, Spec, SyntheticSource

ItemsByLanguage = dict[str, list[MCItem]]

# Every variant of the Belebele release has the same 900 questions (488 passages), parallel.
BELEBELE_QUESTIONS_PER_LANGUAGE = 900


@dataclass(frozen=True)
class LoadedItems:
    train: ItemsByLanguage  # the split training items come from
    eval: ItemsByLanguage  # the split evaluated items come from (the same one: ids are held out)
    own_splits: bool  # the set's own train and eval splits (no held-out draw)
    source: str  # provenance URI
    digest: str  # of every item loaded


@dataclass(frozen=True)
class DataSummary:
    train_items: int | None  # None: unknown until the hub is contacted
    held_out_ids: int
    leaked_ids: int
    eval_items: dict[str, int]
    loaded: bool  # False: sizes follow from the source's known shape; nothing was read
    note: str = ""


class SourceLoader(Protocol):
    def load(self, spec: Spec, train_languages: Sequence[str], eval_languages: Sequence[str]) -> LoadedItems: ...

    def local_path(self, source: Any) -> str | None:
        """The local file or directory the source reads; None for generated or hub data."""

    def unloaded_summary(self, spec: Spec) -> DataSummary | None:
        """The sizes `relxfer plan` shows for a source it does not read (a hub); None: load it."""


def _single_split(items: ItemsByLanguage, uri: str, digest: str) -> LoadedItems:
    return LoadedItems(train=items, eval=items, own_splits=False, source=uri, digest=digest)


class SyntheticLoader:
    def load(self, spec: Spec, train_languages: Sequence[str], eval_languages: Sequence[str]) -> LoadedItems:
        from relxfer.data.digest import items_digest

        source = spec.data.source
        assert isinstance(source, SyntheticSource)
        langs = [
            synthetic.SyntheticLanguage(code=lang.code, overlap=lang.overlap, alphabet=lang.alphabet)
            for lang in source.languages
        ]
        generated = synthetic.generate(
            langs,
            n_passages=source.n_passages,
            questions_per_passage=source.questions_per_passage,
            facts_per_passage=source.facts_per_passage,
            objects_per_category=source.objects_per_category,
            seed=source.seed,
        )
        items = {code: generated[code] for code in dict.fromkeys([*train_languages, *eval_languages])}
        uri = f"relxfer-synthetic://seed={source.seed}/passages={source.n_passages}"
        return _single_split(items, uri, items_digest(i for its in items.values() for i in its))

    def local_path(self, source: Any) -> str | None:
        return None

    def unloaded_summary(self, spec: Spec) -> DataSummary | None:
        return None  # generated offline, in seconds


class BelebeleLoader:
    def load(self, spec: Spec, train_languages: Sequence[str], eval_languages: Sequence[str]) -> LoadedItems:
        from relxfer.data.belebele import load_belebele

        source = spec.data.source
        assert isinstance(source, BelebeleSource)
        languages = list(dict.fromkeys([*train_languages, *eval_languages]))
        data = load_belebele(languages, path=source.path, hub_id=source.hub_id, revision=source.revision)
        return _single_split(data.items_by_language, data.source, data.digest)

    def local_path(self, source: Any) -> str | None:
        return source.path if isinstance(source, BelebeleSource) else None

    def unloaded_summary(self, spec: Spec) -> DataSummary | None:
        source = spec.data.source
        assert isinstance(source, BelebeleSource)
        if source.path:
            return None
        held_out = spec.data.split.held_out
        per_language = BELEBELE_QUESTIONS_PER_LANGUAGE - held_out
        cap = spec.train.max_items_per_language
        per_language = min(per_language, cap) if cap else per_language
        max_items = spec.evaluation.max_items
        n_eval = min(held_out, max_items) if max_items else held_out
        return DataSummary(
            train_items=per_language * len(spec.train_languages),
            held_out_ids=held_out,
            leaked_ids=0,
            eval_items={lang: n_eval for lang in spec.eval_languages},
            loaded=False,
            note=(
                f"{source.hub_id} not contacted; sizes from Belebele's {BELEBELE_QUESTIONS_PER_LANGUAGE} parallel "
                f"questions per language; the leakage guard checks the loaded data before any run"
            ),
        )


class ParallelLoader:
    def load(self, spec: Spec, train_languages: Sequence[str], eval_languages: Sequence[str]) -> LoadedItems:
        source = spec.data.source
        assert isinstance(source, ParallelSource)
        declaration = parallel_declaration(source)
        train, evaluate = declaration.train_split, declaration.eval_split
        if declaration.own_splits:
            wanted = {train: list(train_languages), evaluate: list(eval_languages)}
        else:
            wanted = {train: list(dict.fromkeys([*train_languages, *eval_languages]))}
        data = load_parallel(declaration, wanted, n_options=len(prompt_labels(spec)))
        return LoadedItems(
            train=data.items[train],
            eval=data.items[evaluate],
            own_splits=declaration.own_splits,
            source=data.source,
            digest=data.digest,
        )

    def local_path(self, source: Any) -> str | None:
        return source.path if isinstance(source, ParallelSource) else None

    def unloaded_summary(self, spec: Spec) -> DataSummary | None:
        """A declared hub set, not contacted: with one split the evaluation size is the held-out
        count; the rest is known once the rows are loaded."""
        source = spec.data.source
        assert isinstance(source, ParallelSource)
        if source.path:
            return None
        own_splits = source.splits is not None and source.splits.train != source.splits.eval
        held_out = None if own_splits else spec.data.split.held_out
        known = [n for n in (held_out, spec.evaluation.max_items) if n is not None]
        n_eval = min(known) if known else None
        return DataSummary(
            train_items=None,
            held_out_ids=held_out or 0,
            leaked_ids=0,
            eval_items={lang: n_eval for lang in spec.eval_languages} if n_eval is not None else {},
            loaded=False,
            note=(
                f"{source.hub_id} not contacted; the sizes it does not fix are known once loaded, and the "
                f"leakage guard and the column checks run on the loaded rows before any run"
            ),
        )


def parallel_declaration(source: ParallelSource) -> ParallelDeclaration:
    """The data layer's declaration of a (recipe-expanded) parallel source."""
    columns = source.columns
    assert columns is not None, "checked when the spec was loaded"
    splits = source.splits
    return ParallelDeclaration(
        columns=Columns(
            answer=columns.answer,
            id=columns.id,
            group=columns.group,
            passage=columns.passage,
            question=columns.question,
            options=columns.options,
        ),
        answer_format=source.answer_format or "number",
        choices=source.choices,
        path=source.path,
        files=source.files,
        format=source.format,
        hub_id=source.hub_id,
        config=source.config,
        revision=source.revision,
        train_split=splits.train if splits else "test",
        eval_split=splits.eval if splits else "test",
    )


def prompt_labels(spec: Spec) -> tuple[str, ...]:
    """The labels the prompt scores: a preset's own when it fixes them, else the spec's."""
    preset = PRESETS[spec.prompt.preset]
    return preset.labels if preset.fixed_labels else spec.prompt.labels


LOADERS: dict[type, SourceLoader] = {
    SyntheticSource: SyntheticLoader(),
    BelebeleSource: BelebeleLoader(),
    ParallelSource: ParallelLoader(),
}


def loader_for(source: DataSource) -> SourceLoader:
    return LOADERS[type(source)]
