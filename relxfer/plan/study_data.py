"""The items a study uses: load its source, hold out question ids, build the training set and the
evaluation sets, and refuse to go on if any held-out question reached training."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from relxfer.data import split
from relxfer.data.digest import items_digest
from relxfer.data.items import MCItem
from relxfer.plan.sources import DataSummary, loader_for
from relxfer.spec.types import ParallelSource, Spec


@dataclass(frozen=True)
class StudyData:
    train_items: list[MCItem]
    eval_items: dict[str, list[MCItem]]  # language -> held-out items
    held_out_ids: list[str]
    source: str
    digest: str  # of everything loaded
    train_digest: str
    eval_digests: dict[str, str]


def local_data_digest(spec: Spec) -> str:
    """Digest of the items a local-path source gives for the spec's languages: the data's identity
    in cell keys, wherever the directory lies."""
    path = loader_for(spec.data.source).local_path(spec.data.source)
    assert path, "only a local source has a directory"
    key = (spec.hash, path, _mtimes(path))
    if key not in _DIGESTS:
        _DIGESTS[key] = loader_for(spec.data.source).load(spec, spec.train_languages, spec.eval_languages).digest
    return _DIGESTS[key]


def _mtimes(path: str) -> tuple[tuple[str, int], ...]:
    # Part of the cache key, so a file edited within one process is read again.
    where = Path(path)
    files = [where] if where.is_file() else [f for f in where.rglob("*") if f.is_file()]
    return tuple(sorted((str(f.relative_to(where)), f.stat().st_mtime_ns) for f in files))


# (spec hash, path, file stamps) -> digest: planning a spec reads its files once per process.
_DIGESTS: dict[tuple[str, str, tuple[tuple[str, int], ...]], str] = {}


def load_study_data(spec: Spec) -> StudyData:
    loaded = loader_for(spec.data.source).load(spec, spec.train_languages, spec.eval_languages)
    if loaded.own_splits:
        # The set's own splits: every evaluated id is held out, and none may reach training.
        train = [item for lang in spec.train_languages for item in loaded.train[lang]]
        evaluation = _drawn(spec, {lang: list(loaded.eval[lang]) for lang in spec.eval_languages})
        held_out_ids = sorted({item.question_id for items in evaluation.values() for item in items})
        train = _capped(train, spec)
        split.assert_no_leakage(train, held_out_ids)
    else:
        split_cfg = spec.data.split
        held_out = split.held_out_split(loaded.train, split_cfg.held_out, split_cfg.seed, unit=split_cfg.unit)
        train = _capped(held_out.training_items(loaded.train, spec.train_languages), spec)
        held_out.assert_no_leakage(train)
        evaluation = held_out.evaluation_items(loaded.train, spec.eval_languages)
        held_out_ids = list(held_out.held_out_ids)
    max_items = spec.evaluation.max_items
    if max_items is not None:
        evaluation = {lang: items[:max_items] for lang, items in evaluation.items()}
    return StudyData(
        train_items=train,
        eval_items=evaluation,
        held_out_ids=held_out_ids,
        source=loaded.source,
        digest=loaded.digest,
        train_digest=items_digest(train),
        eval_digests={lang: items_digest(items) for lang, items in evaluation.items()},
    )


def _drawn(spec: Spec, evaluation: dict[str, list[MCItem]]) -> dict[str, list[MCItem]]:
    """With `evaluation.max_items` below the split's size, a seeded draw (`data.split.seed`) of
    that many ids, the same in every language, kept in file order: a split may be sorted (SIB-200's
    test split is, by topic), so its first rows would be a sample of one class."""
    max_items = spec.evaluation.max_items
    ids = sorted({item.question_id for items in evaluation.values() for item in items})
    if max_items is None or max_items >= len(ids):
        return evaluation
    drawn = set(random.Random(spec.data.split.seed).sample(ids, max_items))
    return {lang: [item for item in items if item.question_id in drawn] for lang, items in evaluation.items()}


def _capped(train: list[MCItem], spec: Spec) -> list[MCItem]:
    """At most `train.max_items_per_language` items of each training language, in file order."""
    cap = spec.train.max_items_per_language
    if cap is None:
        return train
    return [item for lang in spec.train_languages for item in [i for i in train if i.language == lang][:cap]]


def summarize_study_data(spec: Spec) -> DataSummary:
    """Sizes of the training and evaluation sets. Local and synthetic data are loaded and counted
    (leakage is measured); a hub source is not contacted: its loader says what it knows."""
    unloaded = loader_for(spec.data.source).unloaded_summary(spec)
    if unloaded is not None:
        return unloaded
    data = load_study_data(spec)
    return DataSummary(
        train_items=len(data.train_items),
        held_out_ids=len(data.held_out_ids),
        leaked_ids=len({item.question_id for item in data.train_items} & set(data.held_out_ids)),
        eval_items={lang: len(items) for lang, items in data.eval_items.items()},
        loaded=True,
    )


def check_local_data(spec: Spec) -> None:
    """Load a declared local source's rows, so every column, answer and id problem is reported
    (DataError, with file and row) before anything runs; a hub is not contacted here."""
    source = spec.data.source
    if isinstance(source, ParallelSource) and source.path:
        load_study_data(spec)
