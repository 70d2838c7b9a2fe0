"""The items a study uses: load its source, hold out question ids, build the training set and the
evaluation sets, and refuse to go on if any held-out question reached training."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from relxfer.data import split, synthetic
from relxfer.data.digest import items_digest
from relxfer.data.items import MCItem
from relxfer.spec.types import BelebeleSource, Spec, SyntheticSource


@dataclass(frozen=True)
class StudyData:
    train_items: list[MCItem]
    eval_items: dict[str, list[MCItem]]  # language -> held-out items
    held_out_ids: list[str]
    source: str
    digest: str  # of everything loaded
    train_digest: str
    eval_digests: dict[str, str]


def _load_source(spec: Spec, languages: list[str]) -> tuple[dict[str, list[MCItem]], str]:
    source = spec.data.source
    if isinstance(source, SyntheticSource):
        langs = [
            synthetic.SyntheticLanguage(code=lang.code, overlap=lang.overlap, alphabet=lang.alphabet)
            for lang in source.languages
        ]
        items = synthetic.generate(
            langs,
            n_passages=source.n_passages,
            questions_per_passage=source.questions_per_passage,
            facts_per_passage=source.facts_per_passage,
            objects_per_category=source.objects_per_category,
            seed=source.seed,
        )
        uri = f"relxfer-synthetic://seed={source.seed}/passages={source.n_passages}"
        return {code: items[code] for code in languages}, uri
    from relxfer.data.belebele import load_belebele

    data = load_belebele(languages, path=source.path, hub_id=source.hub_id, revision=source.revision)
    return data.items_by_language, data.source


def local_data_digest(spec: Spec) -> str:
    """Digest of the items a local-path source gives for the spec's languages: the data's identity
    in cell keys, wherever the directory lies."""
    languages = sorted({*spec.train_languages, *spec.eval_languages})
    source = spec.data.source
    assert isinstance(source, BelebeleSource) and source.path, "only a local source has a directory"
    return _local_digest(source.path, tuple(languages), _mtimes(source.path))


def _mtimes(path: str) -> tuple[tuple[str, int], ...]:
    # Part of the cache key, so a file edited within one process is read again.
    folder = Path(path)
    return tuple(sorted((f.name, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))


@functools.lru_cache(maxsize=8)
def _local_digest(path: str, languages: tuple[str, ...], _stamp: tuple[tuple[str, int], ...]) -> str:
    from relxfer.data.belebele import load_belebele

    data = load_belebele(list(languages), path=path)
    return data.digest


def load_study_data(spec: Spec) -> StudyData:
    languages = list(dict.fromkeys([*spec.train_languages, *spec.eval_languages]))
    items_by_language, uri = _load_source(spec, languages)
    split_cfg = spec.data.split
    held_out = split.held_out_split(items_by_language, split_cfg.held_out, split_cfg.seed, unit=split_cfg.unit)
    train = held_out.training_items(items_by_language, spec.train_languages)
    cap = spec.train.max_items_per_language
    if cap is not None:
        train = [item for lang in spec.train_languages for item in [i for i in train if i.language == lang][:cap]]
    held_out.assert_no_leakage(train)
    evaluation = held_out.evaluation_items(items_by_language, spec.eval_languages)
    max_items = spec.evaluation.max_items
    if max_items is not None:
        evaluation = {lang: items[:max_items] for lang, items in evaluation.items()}
    return StudyData(
        train_items=train,
        eval_items=evaluation,
        held_out_ids=list(held_out.held_out_ids),
        source=uri,
        digest=items_digest(i for items in items_by_language.values() for i in items),
        train_digest=items_digest(train),
        eval_digests={lang: items_digest(items) for lang, items in evaluation.items()},
    )


# Every variant of the Belebele release has the same 900 questions (488 passages), parallel.
BELEBELE_QUESTIONS_PER_LANGUAGE = 900


@dataclass(frozen=True)
class DataSummary:
    train_items: int
    held_out_ids: int
    leaked_ids: int
    eval_items: dict[str, int]
    loaded: bool  # False: sizes follow from the source's known shape; nothing was read
    note: str = ""


def summarize_study_data(spec: Spec) -> DataSummary:
    """Sizes of the training and evaluation sets. Local and synthetic data are loaded and counted
    (leakage is measured); a hub source is not contacted: its sizes follow from Belebele's shape."""
    source = spec.data.source
    if isinstance(source, BelebeleSource) and not source.path:
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
    data = load_study_data(spec)
    return DataSummary(
        train_items=len(data.train_items),
        held_out_ids=len(data.held_out_ids),
        leaked_ids=len({item.question_id for item in data.train_items} & set(data.held_out_ids)),
        eval_items={lang: len(items) for lang, items in data.eval_items.items()},
        loaded=True,
    )
