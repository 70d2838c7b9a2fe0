"""Stable content digests: of multiple-choice items, for provenance (the `digest` of an
mlflow.log_input-style dataset record), and of a file; equal content gives equal digests on any
machine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from relxfer.data.items import MCItem

DIGEST_LENGTH = 16  # hex characters kept: 64 bits, plenty to tell data sets apart


def items_digest(items: Iterable[MCItem]) -> str:
    """Short sha256 hex over every field of the items, in canonical (language, question_id)
    order: the digest names the set of items, not the order a file or caller listed them in."""
    sha = hashlib.sha256()
    for item in sorted(items, key=lambda it: (it.language, it.question_id)):
        record = [
            item.language,
            item.question_id,
            item.passage_id,
            item.passage,
            item.question,
            list(item.options),
            item.gold,
        ]
        # One JSON line per item: unambiguous field boundaries, independent of Python's repr.
        sha.update(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        sha.update(b"\n")
    return sha.hexdigest()[:DIGEST_LENGTH]


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
