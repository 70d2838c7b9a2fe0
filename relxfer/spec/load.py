"""Load a spec file: parse its JSON strictly (relxfer.spec.json_reader), validate it against
schemas/spec.schema.json (relxfer.spec.schema_problems), fill defaults, check what the schema cannot
(relxfer.spec.checks), and return a Spec. Every problem of a spec is reported at once: one line
each, in the order they appear in the file."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from relxfer.errors import SpecError
from relxfer.spec.checks import FINETUNE_CONDITIONS, N_OPTIONS, EvalGroup, SpecChecks  # noqa: F401 (re-exported)
from relxfer.spec.json_reader import read_spec_json
from relxfer.spec.schema_problems import (
    Problem,
    branch_kind,
    resolve_ref,
    schema_problems,
)

SCHEMA_FILE = "spec.schema.json"
# Optional sections that exist with their defaults even when a spec leaves them out.
# `finetune` is not among them: a spec without it declares no fine-tune.
DEFAULTED_SECTIONS = ("prompt", "cot", "evaluation", "analysis")


def schema_path() -> Path:
    """The schema ships inside the package (relxfer/schemas is a link to the top-level schemas/)."""
    return Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_FILE


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(schema_path().read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Spec:
    """A validated spec with every default filled in. `raw` is that full dict (logged as the
    parent run's resolved spec); the other fields are the parts code reads most."""

    path: Path
    raw: dict
    name: str
    experiment: str
    train_languages: tuple[str, ...]
    groups: tuple[EvalGroup, ...]
    models: tuple[dict, ...]
    finetune: dict | None
    conditions: tuple[str, ...]
    seeds: tuple[int, ...]
    hash: str = field(default="")

    @property
    def data(self) -> dict:
        return self.raw["data"]

    @property
    def prompt(self) -> dict:
        return self.raw["prompt"]

    @property
    def cot(self) -> dict:
        return self.raw["cot"]

    @property
    def evaluation(self) -> dict:
        return self.raw["evaluation"]

    @property
    def eval_languages(self) -> tuple[str, ...]:
        return tuple(code for g in self.groups for code in g.languages)

    def model(self, name: str) -> dict:
        return next(m for m in self.models if m["name"] == name)

    @property
    def eval_quantization(self) -> dict | None:
        """The 4-bit settings evaluation loads base models with: the fine-tune's, when it is a
        QLoRA and `evaluation.quantize_base` is on (the adapter is then evaluated on the base it
        was trained on); None otherwise."""
        ft = self.finetune
        if ft is not None and ft["method"] == "qlora" and self.evaluation["quantize_base"]:
            return ft["quantization"]
        return None


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
    return Spec(
        path=path,
        raw=raw,
        name=raw["name"],
        experiment=raw.get("experiment") or raw["name"],
        train_languages=tuple(raw["train"]["languages"]),
        groups=groups,
        models=tuple(raw["models"]),
        finetune=raw.get("finetune"),
        conditions=tuple(raw["conditions"]),
        seeds=tuple(raw["seeds"]),
        hash=spec_hash(raw),
    )


def _in_file_order(problems: list[Problem], raw) -> list[Problem]:
    """Problems sorted by where their place first appears in the document (stable otherwise)."""
    order: dict[tuple, int] = {}

    def walk(node, pointer: tuple) -> None:
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


def spec_hash(raw: dict) -> str:
    """Hash of everything in the spec that can change a result (not its prose)."""
    relevant = {k: v for k, v in raw.items() if k not in ("$schema", "description", "notes")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _fill(instance: Any, schema: dict, root: dict) -> None:
    schema = resolve_ref(schema, root)
    if "oneOf" in schema and isinstance(instance, dict):
        # Object-valued choices (data source, engines) are made by `kind`: fill that branch.
        for branch in schema["oneOf"]:
            if branch_kind(branch, root) == instance.get("kind"):
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


def fill_defaults(raw: dict) -> dict:
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


def section_defaults(def_name: str, partial: dict | None, error: type[Exception] = SpecError) -> dict:
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
