"""Packaged declarations of known parallel sets (relxfer/data/recipes/<name>.json): each is the
JSON a spec's `parallel` source would hold, so a recipe fills what a spec leaves unset and a set
without a recipe is declared in the spec alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECIPE_DIR = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe(name: str) -> dict[str, Any]:
    """The recipe's declaration (its `description` left out: it documents, it declares nothing)."""
    with (RECIPE_DIR / f"{name}.json").open(encoding="utf-8") as handle:
        declared: dict[str, Any] = json.load(handle)
    declared.pop("description", None)
    return declared
