"""Every schema violation of a spec as a one-line problem at its JSON path, worded for the person
who wrote the spec rather than for the validator:

- an object chosen by `kind` (data source, engines) is explained by the branch of its kind: a
  mistake inside `{"kind": "belebele", ...}` names the bad field, not "is not valid under any of
  the given schemas";
- unknown keys and enum values get a did-you-mean;
- a language code of the wrong shape is left to the language check (same place, same
  did-you-mean an unknown code gets), see `relxfer.spec.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from relxfer.suggest import close_matches, did_you_mean

Pointer = tuple[str | int, ...]  # JSON path as a tuple of keys and indices; () is the document
Schema = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    pointer: Pointer
    message: str
    # What is broken (for a missing key: the key's own path; None: the pointer itself); semantic
    # checks that read it skip.
    affected: Pointer | None = None
    # False when the value is still usable by the checks (a language code of the wrong shape).
    blocks: bool = True

    def __post_init__(self) -> None:
        if self.affected == self.pointer:  # the same problem, however it was made
            object.__setattr__(self, "affected", None)

    @property
    def affects(self) -> Pointer:
        return self.pointer if self.affected is None else self.affected

    def line(self, path: str | Path) -> str:
        return f"{path}: {format_pointer(self.pointer)}: {self.message}"


def format_pointer(pointer: Pointer) -> str:
    return "/" + "/".join(str(p) for p in pointer)


def overlaps(a: Pointer, b: Pointer) -> bool:
    """True when one path is inside the other (or they are equal)."""
    n = min(len(a), len(b))
    return tuple(a[:n]) == tuple(b[:n])


def resolve_ref(schema: Schema, root: Schema) -> Schema:
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref  # the schema only uses local references
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def branch_kind(branch: Schema, root: Schema) -> Any:
    """The `kind` constant that selects a oneOf branch, or None when the branch has none."""
    return resolve_ref(branch, root).get("properties", {}).get("kind", {}).get("const")


def schema_problems(raw: Any, schema: Schema) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    for error in validator.iter_errors(raw):
        problems += [p for p in _explain(error, schema) if p not in problems]
    return problems


def _explain(error: ValidationError, root: Schema) -> list[Problem]:
    pointer = tuple(error.absolute_path)
    kind = error.validator
    if kind in ("oneOf", "anyOf"):
        return _explain_choice(error, root)
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        return [
            Problem(
                pointer,
                f"unknown key {key!r}{did_you_mean(close_matches(key, allowed)) or _allowed(allowed)}",
                affected=(*pointer, key),
            )
            for key in error.instance
            if key not in allowed
        ]
    if kind == "required":
        missing = next((key for key in error.validator_value if error.message.startswith(repr(key))), None)
        return [Problem(pointer, error.message, affected=None if missing is None else (*pointer, missing))]
    if kind == "enum" and isinstance(error.instance, str):
        options = [str(o) for o in error.validator_value]
        hint = did_you_mean(close_matches(error.instance, options)) or f"; one of: {', '.join(options)}"
        return [Problem(pointer, f"{error.instance!r} is not allowed here{hint}")]
    if kind == "not" and set(error.validator_value) == {"required"}:
        keys = error.validator_value["required"]
        return [Problem(pointer, f"give {' or '.join(map(repr, keys))}, not {'both' if len(keys) == 2 else 'all'}")]
    if kind == "type" and error.validator_value == "null" and error.schema.get("description"):
        # A field another one makes meaningless (dependentSchemas): the schema says why.
        return [Problem(pointer, f"not used here: {error.schema['description']}")]
    if kind == "pattern" and error.validator_value == root["$defs"]["languageCode"]["pattern"]:
        return [
            Problem(
                pointer,
                f"{error.instance!r} is not a language code: three lower-case letters, '_' and "
                f"a four-letter script, e.g. arb_Arab or syn_Base",
                blocks=False,
            )
        ]
    return [Problem(pointer, error.message)]


def _allowed(names: list[str]) -> str:
    return f"; allowed here: {', '.join(names)}" if names else ""


def _by_branch(error: ValidationError) -> dict[int, list[ValidationError]]:
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    return branches


def _explain_choice(error: ValidationError, root: Schema) -> list[Problem]:
    """A oneOf/anyOf failure explained by the branch the value was meant for."""
    pointer = tuple(error.absolute_path)
    options = error.validator_value
    kinds = [branch_kind(b, root) for b in options]
    if isinstance(error.instance, dict) and any(k is not None for k in kinds):
        known = [str(k) for k in kinds if k is not None]
        given = error.instance.get("kind")
        if given in kinds:
            chosen = _by_branch(error).get(kinds.index(given), [])
            return [p for sub in chosen for p in _explain(sub, root)]
        if "kind" not in error.instance:
            return [
                Problem(
                    pointer, f"'kind' is a required property (one of: {', '.join(known)})", affected=(*pointer, "kind")
                )
            ]
        hint = did_you_mean(close_matches(str(given), known)) or f"; known: {', '.join(known)}"
        return [Problem((*pointer, "kind"), f"unknown kind {given!r}{hint}")]
    # No kind to go by: a branch whose own shape fits (its errors all lie deeper) explains it.
    fitting = [
        subs for subs in _by_branch(error).values() if all(len(sub.absolute_path) > len(pointer) for sub in subs)
    ]
    if len(fitting) == 1:
        return [p for sub in fitting[0] for p in _explain(sub, root)]
    branches = [resolve_ref(b, root) for b in options]
    # An object where the only object-valued choice is one (a chat template's settings beside
    # a flag): that choice explains it.
    objects = [i for i, b in enumerate(branches) if b.get("type") == "object"]
    if isinstance(error.instance, dict) and len(objects) == 1:
        return [p for sub in _by_branch(error).get(objects[0], []) for p in _explain(sub, root)]
    if isinstance(error.instance, dict) and all(set(b) == {"required"} for b in branches):
        # e.g. a vllm engine needs `launch` or `base_url`: name the keys, not the shapes.
        keys = [" and ".join(repr(k) for k in b["required"]) for b in branches]
        return [Problem(pointer, f"needs {' or '.join(keys)}")]
    shapes = [_describe(b) for b in branches]
    return [Problem(pointer, f"{error.instance!r} is not {' or '.join(shapes)}")]


def _describe(branch: Schema) -> str:
    if "const" in branch:
        return repr(branch["const"])
    if "enum" in branch:
        return "one of " + ", ".join(map(repr, branch["enum"]))
    kind = branch.get("type", "value")
    kind = "list" if kind == "array" else kind
    return f"{'an' if str(kind)[0] in 'aeiou' else 'a'} {kind}"
