"""Rows of a data file, each with its location ("file:line" or "file row N") for error messages:
JSON lines, CSV and TSV (read with a real CSV reader: a quoted field may hold the delimiter, a
quote or a newline), and Parquet."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from relxfer.errors import DataError

FORMATS = ("jsonl", "csv", "tsv", "parquet")
_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}

Located = tuple[str, dict[str, Any]]


def format_of(file: Path, declared: str | None) -> str:
    """The declared format, else the one the file's extension names."""
    if declared is not None:
        return declared
    found = _BY_SUFFIX.get(file.suffix.lower())
    if found is None:
        raise DataError(
            f"{file}: cannot tell the format from the extension; set data.source.format to one of {', '.join(FORMATS)}"
        )
    return found


def read_rows(file: Path, fmt: str) -> Iterator[Located]:
    """(location, row as a dict) for every row of `file`."""
    try:
        if fmt == "jsonl":
            yield from _jsonl_rows(file)
        elif fmt in ("csv", "tsv"):
            yield from _csv_rows(file, "\t" if fmt == "tsv" else ",")
        else:
            yield from _parquet_rows(file)
    except OSError as error:
        raise DataError(f"cannot read {file}: {error.strerror or error}") from error


def json_lines(lines: Iterable[bytes], where: str) -> Iterator[tuple[str, Any]]:
    """(location "file:line", decoded JSON value) for each non-blank line."""
    for number, raw in enumerate(lines, start=1):
        location = f"{where}:{number}"
        try:
            text = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise DataError(f"{location}: not valid UTF-8 (byte {error.start})") from error
        if not text.strip():
            continue
        try:
            yield location, json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{location}: invalid JSON: {error.msg} (column {error.colno})") from error


def _jsonl_rows(file: Path) -> Iterator[Located]:
    with file.open("rb") as lines:
        for location, row in json_lines(lines, str(file)):
            if not isinstance(row, dict):
                raise DataError(f"{location}: expected a JSON object, got {type(row).__name__}")
            yield location, row


def _csv_rows(file: Path, delimiter: str) -> Iterator[Located]:
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return
            start = reader.line_num + 1
            for row in reader:
                # The line a row starts on: a quoted field may span lines.
                location, start = f"{file}:{start}", reader.line_num + 1
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{location}: {len(row)} fields, the header has {len(header)}")
                yield location, dict(zip(header, row))
    except UnicodeDecodeError as error:
        raise DataError(f"{file}: not valid UTF-8 (byte {error.start})") from error
    except csv.Error as error:
        raise DataError(f"{file}: malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {error}") from error


def _parquet_rows(file: Path) -> Iterator[Located]:
    try:
        import pyarrow.parquet as pq  # imported here: only Parquet files need it
    except ImportError as error:
        raise DataError(f"reading {file} needs the `pyarrow` package: pip install pyarrow") from error
    try:
        table = pq.read_table(file)
    except Exception as error:  # pyarrow raises its own errors for damaged files
        raise DataError(f"cannot read {file} as Parquet: {error}") from error
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{file} row {number}", row
