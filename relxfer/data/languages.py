"""The Belebele language table: code, English name, script, family and genus of each of the 122
language variants, read from the versioned package data file `languages.json`.

Family and genus are the labels a study groups languages by (e.g. Semitic targets against
non-Semitic controls), so they are curated data rather than code: see the file's `description`
and `curation` fields, and bump its `version` on any change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from relxfer.errors import SpecError
from relxfer.suggest import close_matches, did_you_mean

_TABLE_FILE = "languages.json"


@dataclass(frozen=True)
class Language:
    """One Belebele language variant.

    `script` is the ISO 15924 English name (short form) of the script named by the code's suffix;
    `romanized` marks a Latin-script rendering of a language normally written in another script.
    """

    code: str
    name: str
    script: str
    family: str
    genus: str
    romanized: bool

    @property
    def script_code(self) -> str:
        """The ISO 15924 four-letter script code, e.g. "Arab" for arb_Arab."""
        return self.code.split("_", 1)[1]


@cache
def _table() -> tuple[str, dict[str, Language]]:
    """(version, {code: Language}) loaded once from the package data file."""
    raw = json.loads(resources.files(__package__).joinpath(_TABLE_FILE).read_text(encoding="utf-8"))
    records = {entry["code"]: Language(**entry) for entry in raw["languages"]}
    return str(raw["version"]), records


def table_version() -> str:
    """Version of the language table, to log with results that depend on its labels."""
    return _table()[0]


def all_languages() -> list[Language]:
    """Every language record, sorted by code."""
    return sorted(_table()[1].values(), key=lambda lang: lang.code)


def language(code: str) -> Language:
    """The record of a Belebele language code; SpecError with suggestions for an unknown code."""
    records = _table()[1]
    if code in records:
        return records[code]
    raise SpecError(f"unknown language code {code!r}{did_you_mean(_code_suggestions(code, records))}")


def _code_suggestions(code: str, records: dict[str, Language]) -> list[str]:
    """Up to three codes the user may have meant: the code in other letter case alone; else the
    same language in other scripts ("hin", "tur_Arab"), then close codes and English names
    (so "hbe_Hebr" and "Hebrew" both lead to heb_Hebr)."""
    keys = {lang.code.lower(): lang.code for lang in records.values()}
    wanted = code.strip().lower()
    if wanted in keys:
        return [keys[wanted]]
    keys.update({lang.name.lower(): lang.code for lang in records.values()})
    same_language = sorted(c for c in records if c.lower().split("_")[0] == wanted.split("_")[0])
    return list(dict.fromkeys(same_language + _close_matches(code, keys)))[:3]


def languages_in(group: str) -> list[str]:
    """Sorted codes of the languages whose family or genus is `group` (case-insensitive),
    e.g. languages_in("Semitic") or languages_in("Niger-Congo")."""
    records = _table()[1].values()
    wanted = group.strip().lower()
    codes = sorted(lang.code for lang in records if wanted in (lang.family.lower(), lang.genus.lower()))
    if codes:
        return codes
    names = {name.lower(): name for lang in records for name in (lang.family, lang.genus)}
    suggestions = _close_matches(group, names)
    raise SpecError(f"unknown language family or genus {group!r}{did_you_mean(suggestions)}")


def _close_matches(word: str, keys: dict[str, str]) -> list[str]:
    """Values of the (lower-case) keys closest to `word`, best first, without duplicates."""
    return list(dict.fromkeys(keys[match] for match in close_matches(word, keys)))
