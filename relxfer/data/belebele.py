"""Load Belebele (Bandarkar et al. 2023) as MCItems, from one of three sources:

- the Hugging Face hub (`facebook/belebele`: one config per language, split "test"),
- a local directory of `<code>.jsonl` files (the layout of the official release zip),
- the official release zip itself, read in place (members `<code>.jsonl` or `<dir>/<code>.jsonl`).

Every source yields rows of the Hugging Face schema: `link`, `question_number`, `flores_passage`,
`question`, `mc_answer1..4`, `correct_answer_num` ("1".."4"); `dialect` and `ds` are not used.
A question's id is f"{link}#{question_number}", parallel across languages.

The result carries a provenance `source` URI and a content `digest`, for an
mlflow.log_input-style dataset record (logged elsewhere: only relxfer.tracking talks to MLflow).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relxfer.data.digest import items_digest
from relxfer.data.items import MCItem
from relxfer.data.languages import language
from relxfer.data.tables import json_lines
from relxfer.errors import DataError, SpecError

DEFAULT_HUB_ID = "facebook/belebele"
HUB_SPLIT = "test"  # the only split of each language config on the hub

_ANSWER_FIELDS = ("mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4")
_TEXT_FIELDS = ("link", "flores_passage", "question", *_ANSWER_FIELDS)
REQUIRED_FIELDS = ("link", "question_number", "flores_passage", "question", *_ANSWER_FIELDS, "correct_answer_num")
_GOLD_VALUES = ("1", "2", "3", "4")
_LOCAL_HINT = "a local directory of <code>.jsonl files or the Belebele release zip"


@dataclass(frozen=True)
class BelebeleData:
    """Items per language, in the order requested, with provenance.

    `source` is a URI (hf://datasets/<id>[@<revision>] or file:///...); `digest` is a short
    sha256 over all items (see relxfer.data.digest), `language_digests` the same per language.
    """

    items_by_language: dict[str, list[MCItem]]
    source: str
    digest: str
    language_digests: dict[str, str]

    @property
    def languages(self) -> list[str]:
        return list(self.items_by_language)

    @property
    def n_items(self) -> int:
        return sum(len(items) for items in self.items_by_language.values())


def load_belebele(
    languages: Sequence[str],
    *,
    path: str | Path | None = None,
    hub_id: str = DEFAULT_HUB_ID,
    revision: str | None = None,
) -> BelebeleData:
    """Load the given Belebele languages (FLORES codes such as "arb_Arab").

    With `path`, read a local directory of <code>.jsonl files or the release zip; without it,
    load `hub_id` from the Hugging Face hub at `revision` (None: the default branch).
    Raises DataError for unreadable or malformed data, SpecError for bad arguments.
    """
    codes = _requested_codes(languages)
    if path is not None:
        if revision is not None:
            raise SpecError("a dataset revision applies to the hub only; drop `revision` or `path`")
        items_by_language, source = _load_local(Path(path), codes)
    else:
        items_by_language, source = _load_hub(hub_id, codes, revision)
    return BelebeleData(
        items_by_language=items_by_language,
        source=source,
        digest=items_digest(item for items in items_by_language.values() for item in items),
        language_digests={code: items_digest(items) for code, items in items_by_language.items()},
    )


def _requested_codes(languages: Sequence[str]) -> list[str]:
    if isinstance(languages, str):  # a lone code would otherwise be split into characters
        languages = [languages]
    codes = list(dict.fromkeys(languages))  # drop repeats, keep order
    if not codes:
        raise SpecError("no Belebele languages requested")
    return codes


# --- Hugging Face hub -------------------------------------------------------------------------


def _load_hub(hub_id: str, codes: list[str], revision: str | None) -> tuple[dict[str, list[MCItem]], str]:
    for code in codes:
        language(code)  # unknown code: SpecError with suggestions, before any network traffic
    try:
        import datasets  # imported here: slow to import, and only the hub path needs it
    except ImportError as error:
        raise DataError(
            f"loading {hub_id} from the Hugging Face hub needs the `datasets` package: "
            f"pip install datasets, or point the data source at {_LOCAL_HINT}"
        ) from error
    items_by_language = {}
    for code in codes:
        try:
            rows = datasets.load_dataset(hub_id, code, split=HUB_SPLIT, revision=revision)
        except Exception as error:  # offline, network, auth, missing config: all alike to the user
            raise DataError(_hub_failure(hub_id, code, revision, error)) from error
        located = ((f"{hub_id}[{code}] row {number}", row) for number, row in enumerate(rows, start=1))
        items_by_language[code] = _items_from_rows(located, code, where=f"{hub_id}[{code}]")
    source = f"hf://datasets/{hub_id}" + (f"@{revision}" if revision else "")
    return items_by_language, source


def _hub_failure(hub_id: str, code: str, revision: str | None, error: Exception) -> str:
    at_revision = f" at revision {revision!r}" if revision else ""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
    return (
        f"could not load {hub_id} config {code!r}{at_revision} from the Hugging Face hub "
        f"({type(error).__name__}: {reason}); check the network and HF_HUB_OFFLINE, "
        f"or point the data source at {_LOCAL_HINT}"
    )


# --- Local directory or zip -------------------------------------------------------------------


def _load_local(path: Path, codes: list[str]) -> tuple[dict[str, list[MCItem]], str]:
    path = path.expanduser().resolve()
    if path.is_dir():
        return {code: _load_dir_file(path, code) for code in codes}, path.as_uri()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return {code: _load_zip_member(archive, path, code) for code in codes}, path.as_uri()
    if path.exists():
        raise DataError(f"{path} is neither a directory nor a zip file: point the data source at {_LOCAL_HINT}")
    raise DataError(
        f"Belebele data path {path} does not exist: point the data source at {_LOCAL_HINT}, "
        f"or leave the path unset to load {DEFAULT_HUB_ID} from the Hugging Face hub"
    )


def _load_dir_file(directory: Path, code: str) -> list[MCItem]:
    file = directory / f"{code}.jsonl"
    if not file.is_file():
        available = sorted(p.stem for p in directory.glob("*.jsonl") if p.is_file())
        raise DataError(f"{file} not found; {_available(available, directory)}")
    try:
        with file.open("rb") as lines:
            return _items_from_rows(json_lines(lines, str(file)), code, where=str(file))
    except OSError as error:
        raise DataError(f"cannot read {file}: {error.strerror or error}") from error


def _load_zip_member(archive: zipfile.ZipFile, zip_path: Path, code: str) -> list[MCItem]:
    members = _zip_members_by_code(archive)
    candidates = members.get(code, [])
    if not candidates:
        raise DataError(f"{zip_path} has no member {code}.jsonl; {_available(sorted(members), zip_path)}")
    if len(candidates) > 1:
        raise DataError(f"{zip_path} has several members for {code}: {', '.join(candidates)}; keep one")
    where = f"{zip_path}/{candidates[0]}"
    try:
        with archive.open(candidates[0]) as lines:  # streamed from the archive, never extracted
            return _items_from_rows(json_lines(lines, where), code, where=where)
    except (zipfile.BadZipFile, OSError, EOFError) as error:  # damaged or truncated archive
        raise DataError(f"cannot read {where}: {error}") from error


def _zip_members_by_code(archive: zipfile.ZipFile) -> dict[str, list[str]]:
    """{code: [member names]} for members `<code>.jsonl` or `<dir>/<code>.jsonl`, skipping the
    macOS metadata (`__MACOSX/`, `._*`) that zips made on a Mac carry."""
    members: dict[str, list[str]] = {}
    for name in archive.namelist():
        parts = name.split("/")
        code = parts[-1].removesuffix(".jsonl")
        if len(parts) > 2 or code in ("", parts[-1]) or parts[0] == "__MACOSX" or code.startswith("._"):
            continue
        members.setdefault(code, []).append(name)
    return members


def _available(codes: list[str], where: Path) -> str:
    if not codes:
        return f"no <code>.jsonl files in {where}"
    return f"languages available in {where}: {', '.join(codes)}"


# --- Rows to items ----------------------------------------------------------------------------


def _items_from_rows(rows: Iterable[tuple[str, Any]], code: str, where: str) -> list[MCItem]:
    """Convert located rows to items; reject duplicate question ids and empty sources."""
    items: list[MCItem] = []
    first_seen: dict[str, str] = {}
    for location, row in rows:
        item = _item_from_row(row, code, location)
        if item.question_id in first_seen:
            raise DataError(
                f"{location}: duplicate question {item.question_id!r} (first at {first_seen[item.question_id]})"
            )
        first_seen[item.question_id] = location
        items.append(item)
    if not items:
        raise DataError(f"{where}: no items")
    return items


def _item_from_row(row: Any, code: str, location: str) -> MCItem:
    if not isinstance(row, dict):
        raise DataError(f"{location}: expected a JSON object, got {type(row).__name__}")
    missing = [field for field in REQUIRED_FIELDS if field not in row]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(f"{location}: missing field{plural} {', '.join(map(repr, missing))}")
    for field in _TEXT_FIELDS:
        if not isinstance(row[field], str):
            raise DataError(f"{location}: field {field!r} must be a string, got {_shown(row[field])}")
    link = row["link"]
    return MCItem(
        question_id=f"{link}#{_question_number(row['question_number'], location)}",
        passage_id=link,
        language=code,
        passage=row["flores_passage"],
        question=row["question"],
        options=tuple(row[field] for field in _ANSWER_FIELDS),
        gold=_gold_index(row["correct_answer_num"], location),
    )


def _question_number(value: Any, location: str) -> int:
    """The question's position within its passage: an integer (the hub's int64) or digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    raise DataError(f"{location}: question_number must be a positive integer, got {_shown(value)}")


def _gold_index(value: Any, location: str) -> int:
    """0-based index of the correct option from correct_answer_num "1".."4" (ints accepted)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if text not in _GOLD_VALUES:
        raise DataError(f'{location}: correct_answer_num must be one of "1", "2", "3", "4", got {_shown(value)}')
    return _GOLD_VALUES.index(text)


def _shown(value: Any) -> str:
    """A value as it looks in the JSON file, for error messages."""
    return json.dumps(value, ensure_ascii=False, default=str)
