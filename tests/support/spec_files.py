"""Specs as the tests read and write them: a shipped spec's JSON, and a spec written to a file
(text as given, or JSON as a user's editor would save it)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shipped(name: str) -> dict:
    """The JSON of `specs/NAME`."""
    return json.loads((REPO / "specs" / name).read_text())


def write_spec(tmp_path: Path, raw: dict | str, name: str = "spec.json") -> Path:
    """`raw` written to tmp_path/NAME: a string as it is, a dict as indented JSON."""
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw, indent=2, ensure_ascii=False))
    return path
