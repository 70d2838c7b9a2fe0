"""Suggestions ("did you mean ...?") for names a user typed: language codes and families, built-in
models, spec keys and kinds. One wording everywhere: `...; did you mean X?`, `X or Y?`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.7) -> list[str]:
    """Up to `n` candidates closest to `word`, best first, compared without letter case."""
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(str(word).strip().lower(), list(by_lower), n=n, cutoff=cutoff)
    return [by_lower[m] for m in matches]


def did_you_mean(suggestions: list[str]) -> str:
    """'; did you mean X?' / '; did you mean X or Y?' / '; did you mean X, Y or Z?' ('' for none)."""
    if not suggestions:
        return ""
    if len(suggestions) == 1:
        return f"; did you mean {suggestions[0]}?"
    return f"; did you mean {', '.join(suggestions[:-1])} or {suggestions[-1]}?"
