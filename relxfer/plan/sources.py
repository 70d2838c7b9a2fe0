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


@dataclass(frozen=True)
class LoadedItems:
    train: ItemsByLanguage  # the split training items come from
    eval: ItemsByLanguage  # the split evaluated items come from (the same one: ids are held out)
    own_splits: bool  # the set's own train and eval splits (no held-out draw)
    source: str  # provenance URI
    digest: str  # of every item loaded


class SourceLoader(Protocol):
    def load(self, spec: Spec, train_languages: Sequence[str], eval_languages: Sequence[str]) -> LoadedItems: ...

    def local_path(self, source: Any) -> str | None:
        """The local file or directory the source reads; None for generated or hub data."""


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
