"""Load a spec file: parse JSON, validate against schemas/spec.schema.json, fill defaults, check
what the schema cannot (names that must exist, conditions that need a fine-tune), return a Spec."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from .errors import SpecError

SCHEMA_FILE = "spec.schema.json"
# Optional sections that exist with their defaults even when a spec leaves them out.
# `finetune` is not among them: a spec without it declares no fine-tune.
DEFAULTED_SECTIONS = ("prompt", "cot", "evaluation", "analysis")
FINETUNE_CONDITIONS = ("finetuned", "finetuned_cot")
N_OPTIONS = 4  # Belebele and the synthetic set both have four options per question.


def schema_path() -> Path:
    """The schema ships inside the package (relxfer/schemas is a link to the top-level schemas/)."""
    return Path(__file__).resolve().parent / "schemas" / SCHEMA_FILE


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(schema_path().read_text(encoding="utf-8"))


@dataclass(frozen=True)
class EvalGroup:
    name: str
    role: str  # "related" or "control"
    family: str
    languages: tuple[str, ...]


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
    return spec_from_dict(_read_json(path), path)


def spec_from_dict(raw: Any, path: Path) -> Spec:
    """A Spec from parsed JSON; `path` names it in messages and resolves relative data paths.
    A resolved spec (as the parent run stores it) gives back the same spec and hash, which is
    how a worker on another machine rebuilds the driver's spec."""
    _validate(raw, path)
    raw = fill_defaults(raw)
    _expand_paths(raw, path)
    groups = _resolve_groups(raw, path)
    _check_consistency(raw, groups, path)
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


def spec_hash(raw: dict) -> str:
    """Hash of everything in the spec that can change a result (not its prose)."""
    relevant = {k: v for k, v in raw.items() if k not in ("$schema", "description", "notes")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read spec file: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None


def json_pointer(parts) -> str:
    return "/" + "/".join(str(p) for p in parts)


def _validate(raw: Any, path: Path) -> None:
    validator = jsonschema.Draft202012Validator(load_schema())
    error = _in_named_branch(best_match(validator.iter_errors(raw)))
    if error is not None:
        raise SpecError(f"{path}: {json_pointer(error.absolute_path)}: {error.message}")


def _in_named_branch(error):
    """For a `oneOf` whose branches are told apart by `kind` (engines, data sources): the best
    error of the branch the instance names, not "is not valid under any of the given schemas"."""
    if error is None or error.validator != "oneOf" or not isinstance(error.instance, dict):
        return error
    branches: dict = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    named = [errors for errors in branches.values()
             if not any(e.validator == "const" and list(e.relative_path) == ["kind"] for e in errors)]
    return _in_named_branch(best_match(named[0])) if len(named) == 1 else error


def _resolve_ref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref  # the schema only uses local references
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _fill(instance: Any, schema: dict, root: dict) -> None:
    schema = _resolve_ref(schema, root)
    if "oneOf" in schema and isinstance(instance, dict):
        # The only object-valued oneOf is the data source: pick its branch by `kind`.
        for branch in (_resolve_ref(b, root) for b in schema["oneOf"]):
            if branch.get("properties", {}).get("kind", {}).get("const") == instance.get("kind"):
                _fill(instance, branch, root)
                return
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            # A default beside a $ref (a shared definition used with its own default) wins.
            sub_default = sub if "default" in sub else _resolve_ref(sub, root)
            if name not in instance and "default" in sub_default:
                instance[name] = copy.deepcopy(sub_default["default"])
            if name in instance:
                _fill(instance[name], sub, root)
    elif isinstance(instance, list) and "items" in schema:
        for element in instance:
            _fill(element, schema["items"], root)


def fill_defaults(raw: dict) -> dict:
    """A copy of a valid spec with every schema default filled in, the optional sections
    included (except `finetune`, whose absence means no fine-tune), and nested defaults of a
    declared `finetune` section."""
    schema = load_schema()
    filled = copy.deepcopy(raw)
    for section in DEFAULTED_SECTIONS:
        filled.setdefault(section, {})
    filled["data"].setdefault("split", {})
    if "finetune" in filled:
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
        if _resolve_ref(prop, schema).get("type") == "object":
            value.setdefault(name, {})
    _fill(value, section, schema)
    validator = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{def_name}", "$defs": schema["$defs"]})
    problem = best_match(validator.iter_errors(value))
    if problem is not None:
        raise error(f"{def_name}: {json_pointer(problem.absolute_path)}: {problem.message}")
    return value


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_paths(raw: dict, path: Path) -> None:
    """Expand ${VAR} in a local data path and resolve it against the spec's directory."""
    source = raw["data"]["source"]
    if source.get("kind") != "belebele" or not source.get("path"):
        return

    def env(match: re.Match) -> str:
        value = os.environ.get(match.group(1))
        if not value:
            raise SpecError(
                f"{path}: /data/source/path: environment variable {match.group(1)} is not set "
                f"(set it to the Belebele directory or zip)"
            )
        return value

    expanded = Path(_ENV_VAR.sub(env, source["path"])).expanduser()
    if not expanded.is_absolute():
        expanded = (path.parent / expanded).resolve()
    source["path"] = str(expanded)


def _source_languages(raw: dict) -> dict[str, str] | None:
    """Language code -> family for a synthetic source; None for Belebele (checked against the
    language table instead)."""
    source = raw["data"]["source"]
    if source["kind"] == "synthetic":
        return {lang["code"]: lang["family"] for lang in source["languages"]}
    return None


def _resolve_groups(raw: dict, path: Path) -> tuple[EvalGroup, ...]:
    known = _source_languages(raw)
    groups = []
    for i, group in enumerate(raw["eval"]["groups"]):
        where = f"{path}: /eval/groups/{i}"
        codes = group.get("languages")
        family = group.get("family")
        if codes is None:
            if family is None:
                raise SpecError(f"{where}: a group needs `languages` or a `family` to select them")
            if known is not None:
                codes = [c for c, f in known.items() if f.lower() == family.lower()]
                if not codes:
                    raise SpecError(f"{where}/family: no synthetic language has family '{family}'")
            else:
                codes = _belebele_family(family, where)
        for j, code in enumerate(codes):
            _check_language(code, known, f"{where}/languages/{j}")
        if family is None:
            family = known[codes[0]] if known is not None else _belebele_genus(codes[0])
        groups.append(EvalGroup(group["name"], group["role"], family, tuple(codes)))
    return tuple(groups)


def _belebele_family(family: str, where: str) -> list[str]:
    from .data.languages import languages_in

    try:
        return list(languages_in(family))
    except SpecError as e:
        raise SpecError(f"{where}/family: {e}") from None


def _belebele_genus(code: str) -> str:
    from .data.languages import language

    return language(code).genus


def _check_language(code: str, known: dict[str, str] | None, where: str) -> None:
    if known is not None:
        if code not in known:
            import difflib

            close = difflib.get_close_matches(code, list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; declared: {', '.join(known)}"
            raise SpecError(f"{where}: language '{code}' is not declared in /data/source/languages{hint}")
        return
    from .data.languages import language

    try:
        language(code)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None


def _check_consistency(raw: dict, groups: tuple[EvalGroup, ...], path: Path) -> None:
    known = _source_languages(raw)
    for j, code in enumerate(raw["train"]["languages"]):
        _check_language(code, known, f"{path}: /train/languages/{j}")
    needs_finetune = [c for c in raw["conditions"] if c in FINETUNE_CONDITIONS]
    if needs_finetune and "finetune" not in raw:
        raise SpecError(
            f"{path}: /conditions: condition '{needs_finetune[0]}' needs a fine-tune, "
            f"but the spec declares no `finetune` section"
        )
    from .prompts import PromptBuilder  # the presets live there; building one checks the options

    try:
        PromptBuilder.from_spec(raw["prompt"])
    except SpecError as e:
        raise SpecError(f"{path}: /prompt: {e}") from None
    labels = raw["prompt"]["labels"]
    if len(labels) != N_OPTIONS:
        raise SpecError(
            f"{path}: /prompt/labels: {len(labels)} labels for {N_OPTIONS} answer options; give exactly {N_OPTIONS}"
        )
    if needs_finetune:
        from .memory import misfit

        for i, model in enumerate(raw["models"]):
            problem = misfit(model, raw["finetune"])
            if problem:
                raise SpecError(f"{path}: /models/{i}/resources: {problem}")
    names = [m["name"] for m in raw["models"]]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise SpecError(f"{path}: /models/{i}/name: duplicate model name '{name}'")
    seen: dict[str, str] = {}
    for group in groups:
        for code in group.languages:
            if code in seen:
                raise SpecError(f"{path}: /eval/groups: language '{code}' is in both '{seen[code]}' and '{group.name}'")
            seen[code] = group.name
