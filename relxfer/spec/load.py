"""Load a spec file: parse its JSON strictly (relxfer.spec.json_reader), validate it against
schemas/spec.schema.json (relxfer.spec.schema_problems), fill defaults, check what the schema cannot
(relxfer.spec.checks), and return a Spec. Every problem of a spec is reported at once: one line
each, in the order they appear in the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from relxfer.errors import SpecError
from relxfer.spec.checks import N_OPTIONS, SpecChecks
from relxfer.spec.defaults import fill_defaults, load_schema, schema_path, section_defaults
from relxfer.spec.json_reader import read_spec_json
from relxfer.spec.schema_problems import Pointer, Problem, schema_problems
from relxfer.spec.types import EvalGroup, Spec

# What callers read from here beside the loading functions.
__all__ = [
    "N_OPTIONS",
    "EvalGroup",
    "Spec",
    "fill_defaults",
    "load_schema",
    "load_spec",
    "schema_path",
    "section_defaults",
    "spec_from_dict",
    "spec_hash",
]


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    return spec_from_dict(read_spec_json(path), path)


def spec_from_dict(raw: Any, path: Path) -> Spec:
    """A Spec from parsed JSON; `path` names it in messages and resolves relative data paths.
    A resolved spec (as the parent run stores it) gives back the same spec and hash, which is
    how a worker on another machine rebuilds the driver's spec."""
    problems = schema_problems(raw, load_schema())
    groups: tuple[EvalGroup, ...] = ()
    if isinstance(raw, dict):
        raw = fill_defaults(raw)
        checks = SpecChecks(raw, path, problems)
        # A check's message replaces the schema's at the same place (a language code of the
        # wrong shape gets the did-you-mean an unknown code gets).
        replaced = {p.pointer for p in checks.problems}
        problems = [p for p in problems if p.pointer not in replaced] + checks.problems
        groups = tuple(checks.groups)
    if problems:
        raise SpecError("\n".join(p.line(path) for p in _in_file_order(problems, raw)))
    return Spec.parse(raw, path, groups, spec_hash(raw))


def _in_file_order(problems: list[Problem], raw: Any) -> list[Problem]:
    """Problems sorted by where their place first appears in the document (stable otherwise)."""
    order: dict[Pointer, int] = {}

    def walk(node: Any, pointer: Pointer) -> None:
        order.setdefault(pointer, len(order))
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            walk(child, (*pointer, key))

    walk(raw, ())

    def position(problem: Problem) -> int:
        pointer = tuple(problem.pointer)
        while pointer not in order:
            pointer = pointer[:-1]
        return order[pointer]

    return sorted(problems, key=position)


def spec_hash(raw: dict[str, Any]) -> str:
    """Hash of everything in the spec that can change a result (not its prose)."""
    relevant = {k: v for k, v in raw.items() if k not in ("$schema", "description", "notes")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
