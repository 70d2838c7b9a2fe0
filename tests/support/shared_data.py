"""The real data beside the repository (`../shared/data`): tests that need it ask here.

Without the data such a test is skipped with the path it looked for; with
RELXFER_REQUIRE_SHARED_DATA=1 in the environment (CI sets it) it fails instead, so a run that
should have checked real data cannot pass by skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BELEBELE = SHARED_DATA / "belebele"
TOKENIZERS = SHARED_DATA / "tokenizers"  # real tokenizers and chat templates, no weights (SOURCE.md)
SIB200 = SHARED_DATA / "sib200"
REQUIRE_ENV = "RELXFER_REQUIRE_SHARED_DATA"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def need(path: Path, what: str) -> Path:
    """`path` when it exists; otherwise skip the test (fail it when the data are required)."""
    if not path.exists():
        message = f"{what} not found at {path} (../shared/data beside the repository)"
        if required():
            pytest.fail(f"{message}; {REQUIRE_ENV} is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    return path


def available(path: Path, what: str) -> bool:
    """Whether `path` exists, for data a test adds to what it checks when present; missing, it
    fails the test when the data are required."""
    if not path.exists() and required():
        pytest.fail(f"{what} not found at {path}; {REQUIRE_ENV} is set", pytrace=False)
    return path.exists()


def belebele_dir() -> Path:
    """The real Belebele directory (one <code>.jsonl per language)."""
    need(BELEBELE / "eng_Latn.jsonl", "real Belebele files")
    return BELEBELE


def sib200_dir() -> Path:
    """The real SIB-200 directory (<code>/{train,dev,test}.tsv): $SIB200_DIR, else ../shared/data."""
    root = Path(os.environ["SIB200_DIR"]) if os.environ.get("SIB200_DIR") else SIB200
    need(root / "arb_Arab" / "train.tsv", "real SIB-200 files")
    return root


def tokenizers_dir() -> Path:
    """The real tokenizer and chat-template folders of the flagship's families (SOURCE.md there)."""
    need(TOKENIZERS / "qwen3" / "vocab.json", "the real tokenizer files")
    return TOKENIZERS
