"""Any parallel multiple-choice or classification set, loaded by declaration: where the rows are
(a Hugging Face hub id, or a local directory of per-language files), which columns hold the
passage, question, options and answer, and which columns identify an item across languages.

A declaration (`ParallelDeclaration`) is plain data; packaged recipes (relxfer/data/recipes/*.json)
are declarations of known sets, and a user's own declaration is the same JSON in the spec.

Every item is checked as it is read, and a problem names the file and row: a missing column, an
answer outside the options, an option count other than the prompt's labels, a repeated id. Then
every language of a split must hold exactly the same ids (parallel), else the first id one
language lacks is named with the row that has it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relxfer.data.digest import items_digest
from relxfer.data.items import MCItem
from relxfer.data.tables import Located, format_of, read_rows
from relxfer.errors import DataError

ANSWER_FORMATS = ("number", "index", "letter", "text")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Columns:
    """Which column holds what. `options`: several columns (one option each) or one column that
    holds a list; None when the declaration's `choices` are every item's options. `id`: the
    columns whose values, joined by "#", name an item in every language (None: the row's
    position). `group`: the column whose items share a passage (None: each item its own)."""

    answer: str
    id: tuple[str, ...] | None = None
    group: str | None = None
    passage: str | None = None
    question: str | None = None
    options: tuple[str, ...] | str | None = None


@dataclass(frozen=True)
class ParallelDeclaration:
    columns: Columns
    answer_format: str = "number"  # number: 1-based; index: 0-based; letter: A, B, ...; text: an option
    choices: tuple[str, ...] | None = None  # options shared by every item (a label set)
    path: str | None = None  # a local directory; else the hub
    files: str | None = None  # file pattern under `path`: {language}, {split}
    format: str | None = None  # jsonl, csv, tsv, parquet; None: from the extension
    hub_id: str | None = None
    config: str | Mapping[str, str] | None = None  # hub config: a pattern with {language}, or per language
    revision: str | None = None
    train_split: str = "test"
    eval_split: str = "test"

    @property
    def own_splits(self) -> bool:
        """The set has separate training and evaluation splits (else ids are held out of one)."""
        return self.train_split != self.eval_split


@dataclass(frozen=True)
class ParallelData:
    """Items per split and language, with provenance (`source` URI, content `digest`)."""

    items: dict[str, dict[str, list[MCItem]]]
    source: str
    digest: str


def load_parallel(
    declaration: ParallelDeclaration,
    languages: Mapping[str, Sequence[str]],
    n_options: int | None = None,
) -> ParallelData:
    """Load `languages` ({split: codes}) as declared; each item must have `n_options` options
    when given (the prompt's labels)."""
    if declaration.path is None and declaration.hub_id is None:
        raise DataError("data.source declares neither a local `path` nor a `hub_id`")
    items: dict[str, dict[str, list[MCItem]]] = {}
    locations: dict[tuple[str, str, str], str] = {}  # (split, language, id) -> where it was read
    for split, codes in languages.items():
        per_language = items.setdefault(split, {})
        for code in dict.fromkeys(codes):
            rows, where = _rows(declaration, code, split)
            per_language[code] = _items(declaration, rows, code, where, n_options, locations, split)
        _check_parallel(per_language, split, locations)
    everything = [
        item for per_language in items.values() for lang_items in per_language.values() for item in lang_items
    ]
    return ParallelData(items=items, source=_uri(declaration), digest=items_digest(_distinct(everything)))


def _distinct(items: Iterable[MCItem]) -> Iterator[MCItem]:
    """Items once each (a split asked for twice, train = eval, is one set of items)."""
    seen: set[MCItem] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def _uri(declaration: ParallelDeclaration) -> str:
    if declaration.path is not None:
        return Path(declaration.path).expanduser().resolve().as_uri()
    return f"hf://datasets/{declaration.hub_id}" + (f"@{declaration.revision}" if declaration.revision else "")


# --- where the rows are -----------------------------------------------------------------------


def _rows(declaration: ParallelDeclaration, code: str, split: str) -> tuple[Iterator[Located], str]:
    if declaration.path is not None:
        return _file_rows(declaration, code, split)
    return _hub_rows(declaration, code, split)


def _file_rows(declaration: ParallelDeclaration, code: str, split: str) -> tuple[Iterator[Located], str]:
    directory = Path(declaration.path or ".").expanduser().resolve()
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist or is not a directory")
    pattern = declaration.files or "{language}.jsonl"
    file = directory / pattern.format(language=code, split=split)
    if not file.is_file():
        raise DataError(f"{file}: no such file for language {code!r} (data.source.files {pattern!r})")
    return read_rows(file, format_of(file, declaration.format)), str(file)


def hub_config(declaration: ParallelDeclaration, code: str) -> str:
    config = declaration.config if declaration.config is not None else "{language}"
    if isinstance(config, str):
        return config.format(language=code)
    if code not in config:
        raise DataError(f"data.source.config names no hub config for language {code!r}")
    return config[code]


def _hub_rows(declaration: ParallelDeclaration, code: str, split: str) -> tuple[Iterator[Located], str]:
    hub_id, config = declaration.hub_id, hub_config(declaration, code)
    where = f"{hub_id}[{config}/{split}]"
    try:
        import datasets  # imported here: slow to import, and only the hub needs it
    except ImportError as error:
        raise DataError(f"loading {hub_id} from the Hugging Face hub needs `datasets`: pip install datasets") from error
    try:
        rows = datasets.load_dataset(hub_id, config, split=split, revision=declaration.revision)
    except Exception as error:  # offline, network, auth, missing config: all alike to the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"could not load {where} from the Hugging Face hub ({reason}); check the network and "
            f"HF_HUB_OFFLINE, or point data.source.path at a local copy"
        ) from error
    return ((f"{where} row {number}", dict(row)) for number, row in enumerate(rows, start=1)), where


# --- rows to items ----------------------------------------------------------------------------


def _items(
    declaration: ParallelDeclaration,
    rows: Iterator[Located],
    code: str,
    where: str,
    n_options: int | None,
    locations: dict[tuple[str, str, str], str],
    split: str,
) -> list[MCItem]:
    items: list[MCItem] = []
    for position, (location, row) in enumerate(rows, start=1):
        item = _item(declaration, row, code, location, split, position)
        if n_options is not None and len(item.options) != n_options:
            raise DataError(f"{location}: {len(item.options)} options, but the prompt has {n_options} labels")
        first = locations.setdefault((split, code, item.question_id), location)
        if first != location:
            raise DataError(f"{location}: duplicate id {item.question_id!r} (first at {first})")
        items.append(item)
    if not items:
        raise DataError(f"{where}: no items")
    return items


def _item(
    declaration: ParallelDeclaration, row: dict[str, Any], code: str, location: str, split: str, position: int
) -> MCItem:
    columns = declaration.columns
    named = [columns.answer, *(columns.id or ()), columns.group, columns.passage, columns.question]
    if isinstance(columns.options, tuple):
        named += columns.options
    elif columns.options is not None:
        named.append(columns.options)
    missing = [name for name in named if name is not None and name not in row]
    if missing:
        raise DataError(f"{location}: no column {missing[0]!r}; the row has {', '.join(map(repr, row))}")
    # Without id columns an item is its row: parallel by order, and named by its split so
    # rows of two splits never share an id.
    question_id = "#".join(_id_part(row[c]) for c in columns.id) if columns.id else f"{split}#{position}"
    options = _options(declaration, row, location)
    return MCItem(
        question_id=question_id,
        passage_id=_id_part(row[columns.group]) if columns.group else question_id,
        language=code,
        passage=_text(row, columns.passage, location),
        question=_text(row, columns.question, location),
        options=options,
        gold=_gold(declaration, row[columns.answer], options, location),
    )


def _id_part(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a Parquet or pandas column may hold whole numbers as floats
    return str(value)


def _text(row: dict[str, Any], column: str | None, location: str) -> str:
    if column is None:
        return ""
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{location}: column {column!r} must be text, got {_shown(value)}")
    return value


def _options(declaration: ParallelDeclaration, row: dict[str, Any], location: str) -> tuple[str, ...]:
    columns = declaration.columns
    if columns.options is None:
        if not declaration.choices:
            raise DataError("data.source declares neither option columns nor `choices`")
        return declaration.choices
    if isinstance(columns.options, tuple):
        return tuple(_text(row, column, location) for column in columns.options)
    values = row[columns.options]
    if isinstance(values, str):  # a list column written out as JSON text (CSV, TSV)
        try:
            values = json.loads(values)
        except json.JSONDecodeError:
            pass
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise DataError(f"{location}: column {columns.options!r} must be a list of texts, got {_shown(values)}")
    return tuple(values)


def _gold(declaration: ParallelDeclaration, value: Any, options: tuple[str, ...], location: str) -> int:
    """0-based index of the answer among the options, read as `answer_format` says."""
    fmt, n, column = declaration.answer_format, len(options), declaration.columns.answer
    if fmt == "text":
        if isinstance(value, str) and value in options:
            return options.index(value)
        raise DataError(
            f"{location}: answer {_shown(value)} in column {column!r} is not one of the options: {', '.join(options)}"
        )
    if fmt == "letter":
        letters = _LETTERS[:n]
        if isinstance(value, str) and len(value) == 1 and value in letters:
            return letters.index(value)
        raise DataError(
            f"{location}: answer {_shown(value)} in column {column!r} is outside the options A to {letters[-1]}"
        )
    first = 1 if fmt == "number" else 0
    number = _whole_number(value)
    if number is None or not first <= number < first + n:
        raise DataError(
            f"{location}: answer {_shown(value)} in column {column!r} is outside the options {first} to {first + n - 1}"
        )
    return number - first


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _check_parallel(
    per_language: dict[str, list[MCItem]], split: str, locations: dict[tuple[str, str, str], str]
) -> None:
    """Every language of a split holds the same ids; else name an id one language lacks."""
    codes = list(per_language)
    if len(codes) < 2:
        return
    reference = codes[0]
    reference_ids = [item.question_id for item in per_language[reference]]
    reference_set = set(reference_ids)
    for code in codes[1:]:
        ids = [item.question_id for item in per_language[code]]
        id_set = set(ids)
        extra = [qid for qid in ids if qid not in reference_set]
        if extra:
            where = locations[(split, code, extra[0])]
            raise DataError(
                f"{where}: id {extra[0]!r} of {code} is not in {reference}: ids are not parallel across languages"
            )
        lacking = [qid for qid in reference_ids if qid not in id_set]
        if lacking:
            where = locations[(split, reference, lacking[0])]
            raise DataError(
                f"{where}: id {lacking[0]!r} of {reference} is not in {code}: ids are not parallel across languages"
            )


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
