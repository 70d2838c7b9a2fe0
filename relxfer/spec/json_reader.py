"""Read a spec file's JSON strictly: a duplicated key is an error (json.loads would keep the last
value silently: two `learning_rate` keys would change a study without a word), and so is nesting
deeper than any spec needs (Python's parser would die with a RecursionError). Every problem is a
SpecError naming the file, line and column."""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relxfer.errors import SpecError

# The pure-Python parts of the json package the strict decoder is built from (typeshed does not
# declare them).
JSONObject: Callable[..., tuple[dict[str, Any], int]] = json.decoder.JSONObject  # type: ignore[attr-defined]
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
py_make_scanner: Callable[[json.JSONDecoder], Any] = json.scanner.py_make_scanner  # type: ignore[attr-defined]

# A spec is about six levels deep; this leaves room for any legitimate file and stays far below
# the recursion limit of the parser.
MAX_DEPTH = 100


def read_spec_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read spec file: {e}") from None
    _check_depth(text, path)
    try:
        return _StrictDecoder(text, path).decode(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _check_depth(text: str, path: Path) -> None:
    """Refuse nesting deeper than MAX_DEPTH before parsing, with the place where it gets too deep.
    Brackets inside strings do not count; malformed strings are left to the parser's message."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            try:
                i = scanstring(text, i + 1)[1]
            except json.JSONDecodeError:
                return
            continue
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line, col = _line_col(text, i)
                raise SpecError(f"{path}:{line}:{col}: invalid JSON: nested more than {MAX_DEPTH} levels deep")
        elif ch in "]}":
            depth -= 1
        i += 1


class _StrictDecoder(json.JSONDecoder):
    """json.JSONDecoder on the pure-Python scanner, whose object parser is wrapped to know where
    each object starts, so a duplicated key can be reported at its own line."""

    def __init__(self, text: str, path: Path):
        super().__init__(object_pairs_hook=self._pairs)
        self._text, self._path = text, path
        self._starts: list[int] = []
        self.parse_object = self._parse_object
        self.scan_once = py_make_scanner(self)

    def _parse_object(self, s_and_end: tuple[str, int], *args: Any, **kwargs: Any) -> tuple[dict[str, Any], int]:
        self._starts.append(s_and_end[1])
        try:
            return JSONObject(s_and_end, *args, **kwargs)
        finally:
            self._starts.pop()

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                self._duplicate(key)
            out[key] = value
        return out

    def _duplicate(self, key: str) -> None:
        positions = [i for k, i in _object_keys(self._text, self._starts[-1]) if k == key]
        line, col = _line_col(self._text, positions[1])
        first, _ = _line_col(self._text, positions[0])
        raise SpecError(f"{self._path}:{line}:{col}: duplicate key {key!r} (first given on line {first}); keep one")


def _object_keys(text: str, start: int) -> list[tuple[str, int]]:
    """(key, index of its opening quote) of the object whose '{' is just before `start`, in
    order. The object has been parsed already, so the text is well-formed here."""
    keys: list[tuple[str, int]] = []
    depth, i, expect_key = 1, start, True
    while depth:
        ch = text[i]
        if ch == '"':
            value, end = scanstring(text, i + 1)
            if depth == 1 and expect_key:
                keys.append((value, i))
                expect_key = False
            i = end
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 1:
            expect_key = True
        i += 1
    return keys
