"""A stable content digest of multiple-choice items, for provenance (the `digest` of an
mlflow.log_input-style dataset record): equal items give equal digests on any machine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

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
