"""The schema (schemas/spec.schema.json) as the one home of every default: fill a whole spec's
defaults, or complete one `$defs` section given in part (a direct library call)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from relxfer.errors import SpecError
from relxfer.spec.schema_problems import branch_kind, resolve_ref, schema_problems

SCHEMA_FILE = "spec.schema.json"
# Optional sections that exist with their defaults even when a spec leaves them out.
# `finetune` is not among them: a spec without it declares no fine-tune.
DEFAULTED_SECTIONS = ("prompt", "cot", "evaluation", "analysis")


def schema_path() -> Path:
    """The schema ships inside the package (relxfer/schemas is a link to the top-level schemas/)."""
    return Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_FILE


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_path().read_text(encoding="utf-8"))
    return schema


def _fill(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    schema = resolve_ref(schema, root)
    if "oneOf" in schema and isinstance(instance, dict):
        # Object-valued choices (data source, engines) are made by `kind`: fill that branch.
        # A choice between a plain value and one object (a chat template) fills the object.
        for branch in schema["oneOf"]:
            if branch_kind(branch, root) == instance.get("kind") and "properties" in resolve_ref(branch, root):
                _fill(instance, branch, root)
                return
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            # A default beside a $ref (a shared definition used with its own default) wins.
            sub_default = sub if "default" in sub else resolve_ref(sub, root)
            if name not in instance and "default" in sub_default:
                instance[name] = copy.deepcopy(sub_default["default"])
            if name in instance:
                _fill(instance[name], sub, root)
    elif isinstance(instance, list) and "items" in schema:
        for element in instance:
            _fill(element, schema["items"], root)


def fill_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a spec with every schema default filled in, the optional sections included
    (except `finetune`, whose absence means no fine-tune), and nested defaults of a declared
    `finetune` section. Parts of the wrong shape are left as they are (the schema reports them)."""
    schema = load_schema()
    filled = copy.deepcopy(raw)
    for section in DEFAULTED_SECTIONS:
        filled.setdefault(section, {})
    if isinstance(filled.get("data"), dict):
        filled["data"].setdefault("split", {})
    if isinstance(filled.get("finetune"), dict):
        for part in ("quantization", "lora", "training"):
            filled["finetune"].setdefault(part, {})
    _fill(filled, schema, schema)
    return filled


def section_defaults(
    def_name: str, partial: dict[str, Any] | None, error: type[Exception] = SpecError
) -> dict[str, Any]:
    """`partial` completed with the schema's defaults for `$defs/<def_name>` (its object-valued
    settings included) and validated against it: the schema is the one home of every default,
    for specs and for direct library calls alike."""
    schema = load_schema()
    section = schema["$defs"][def_name]
    value = copy.deepcopy(partial or {})
    for name, prop in section.get("properties", {}).items():
        if resolve_ref(prop, schema).get("type") == "object":
            value.setdefault(name, {})
    _fill(value, section, schema)
    problems = schema_problems(value, {"$ref": f"#/$defs/{def_name}", "$defs": schema["$defs"]})
    if problems:
        raise error(problems[0].line(def_name))
    return value
