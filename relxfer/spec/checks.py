"""What the schema cannot check: names that must exist (language codes, families, built-in models),
conditions that need a fine-tune, prompt options, label counts, duplicates.

Each check says which parts of the spec it reads; a check whose parts already have a schema
problem is skipped (that problem is reported instead), so every check sees values of the right
shape and every mistake of a spec is reported in one pass. Checks run on the spec with its
defaults filled in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from relxfer.errors import SpecError
from relxfer.spec.builtins import BUILTIN_MODEL_IDS
from relxfer.spec.schema_problems import Pointer, Problem, overlaps
from relxfer.spec.types import Condition, EvalGroup, FinetuneSpec, GroupRole, ModelSpec
from relxfer.suggest import close_matches, did_you_mean

N_OPTIONS = 4  # Belebele and the synthetic set both have four options per question.
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SpecChecks:
    """Run every check on `raw` (defaults filled); `problems` collects what they find and
    `groups` holds the evaluation groups with their languages resolved."""

    def __init__(self, raw: dict[str, Any], path: Path, schema_problems: list[Problem]):
        self.raw, self.path = raw, path
        self.blocked = [p.affects for p in schema_problems if p.blocks]
        self.problems: list[Problem] = []
        self.groups: list[EvalGroup] = []
        source = ("data", "source")
        self._check(self._expand_recipe, [source])
        self._check(self._expand_data_path, [source])
        shape = ("questions_per_passage", "facts_per_passage", "objects_per_category")
        self._check(self._synthetic_shape, [(*source, "kind"), *((*source, field) for field in shape)])
        languages: list[Pointer] = [(*source, "kind"), (*source, "languages")]
        groups = self.raw["eval"]["groups"] if isinstance(self.raw.get("eval"), dict) else None
        # (Groups that are not a list are a schema problem, which any group check would skip.)
        for i in range(len(groups)) if isinstance(groups, list) else []:
            # Per group and field: a mistyped role does not hide a mistyped language code.
            reads: list[Pointer] = [("eval", "groups", i, k) for k in ("languages", "family")]
            self._check(partial(self._resolve_group, i), reads + languages)
        self._check(self._train_languages, [("train", "languages"), (*source, "kind"), (*source, "languages")])
        self._check(self._groups_disjoint, [("eval", "groups"), (*source, "kind"), (*source, "languages")])
        self._check(self._conditions_have_a_finetune, [("conditions",), ("finetune",)])
        self._check(self._finetunes_fit, [("conditions",), ("finetune",), ("models",)])
        self._check(self._prompt_options, [("prompt",)])
        models = self.raw["models"] if isinstance(self.raw.get("models"), list) else [None]
        self._check(
            self._models,
            [("models",)]
            if models == [None]
            else [("models", i, key) for i in range(len(models)) for key in ("name", "source")],
        )

    def _check(self, check: Callable[[], Iterator[Problem]], reads: list[Pointer]) -> None:
        if not any(overlaps(part, broken) for part in reads for broken in self.blocked):
            self.problems.extend(check())

    # --- the data source ------------------------------------------------------------------

    def _source_languages(self) -> dict[str, str] | None:
        """Language code -> family for a synthetic source; None for Belebele (checked against
        the language table instead)."""
        source = self.raw["data"]["source"]
        if source["kind"] == "synthetic":
            return {lang["code"]: lang["family"] for lang in source["languages"]}
        return None

    def _expand_recipe(self) -> Iterator[Problem]:
        """Fill the settings a `parallel` source leaves out from its recipe, so the resolved spec
        (and every cell key) holds the whole declaration; without a recipe, the source must
        declare its columns and where its rows are."""
        source = self.raw["data"]["source"]
        if source.get("kind") != "parallel":
            return
        if source.get("recipe"):
            from relxfer.data.recipes import recipe

            for name, value in recipe(source["recipe"]).items():
                if source.get(name) is None:
                    source[name] = value
        if source.get("columns") is None:
            yield Problem(("data", "source"), "a parallel source needs `columns` (or a `recipe` that declares them)")
        elif source["columns"].get("options") is None and not source.get("choices"):
            yield Problem(("data", "source", "columns"), "declare the options: `columns.options` or `choices`")
        if not source.get("path") and not source.get("hub_id"):
            yield Problem(("data", "source"), "a parallel source needs a local `path` or a `hub_id`")

    def _expand_data_path(self) -> Iterator[Problem]:
        """Expand ${VAR} in a local data path and resolve it against the spec's directory."""
        source = self.raw["data"]["source"]
        if source.get("kind") not in ("belebele", "parallel") or not source.get("path"):
            return
        unset = [name for name in _ENV_VAR.findall(source["path"]) if not os.environ.get(name)]
        if unset:
            what = "the Belebele directory or zip" if source["kind"] == "belebele" else "the data directory"
            yield Problem(("data", "source", "path"), f"environment variable {unset[0]} is not set (set it to {what})")
            return
        expanded = Path(_ENV_VAR.sub(lambda m: os.environ[m.group(1)], source["path"])).expanduser()
        if not expanded.is_absolute():
            expanded = (self.path.parent / expanded).resolve()
        source["path"] = str(expanded)

    def _synthetic_shape(self) -> Iterator[Problem]:
        """The synthetic set's sizes must make a passage (relxfer.data.synthetic.shape_problems)."""
        source = self.raw["data"]["source"]
        if source["kind"] != "synthetic":
            return
        from relxfer.data.synthetic import shape_problems

        sizes = (source["questions_per_passage"], source["facts_per_passage"], source["objects_per_category"])
        for field, message in shape_problems(*sizes):
            yield Problem(("data", "source", field), message)

    # --- languages and groups ---------------------------------------------------------------

    def _language(self, code: str, known: dict[str, str] | None, where: Pointer) -> Iterator[Problem]:
        if known is not None:
            if code not in known:
                hint = did_you_mean(close_matches(code, known)) or f"; declared: {', '.join(known)}"
                yield Problem(where, f"language {code!r} is not declared in /data/source/languages{hint}")
            return
        from relxfer.data.languages import language

        try:
            language(code)
        except SpecError as e:
            yield Problem(where, str(e))

    def _family(self, label: str, known: dict[str, str] | None, where: Pointer, selects: bool) -> Iterator[Problem]:
        """A family or genus must exist: in the language table, or among the families the
        synthetic source declares. Beside explicit languages the family is the group's label and
        may combine names: "Turkic/Sino-Tibetan", "non-Semitic" (each name is checked)."""
        names = [label] if selects else [_unnegated(part.strip()) for part in label.split("/")]
        for name in names:
            problem = self._family_name(name, known)
            if problem:
                inside = f" in {label!r}" if name != label else ""
                yield Problem(where, problem.replace(f"{name!r}", f"{name!r}{inside}", 1))
                return

    @staticmethod
    def _family_name(name: str, known: dict[str, str] | None) -> str | None:
        if known is not None:
            declared = list(dict.fromkeys(known.values()))
            if name.lower() in {f.lower() for f in declared}:
                return None
            hint = did_you_mean(close_matches(name, declared)) or f"; declared: {', '.join(declared)}"
            return f"no synthetic language has family {name!r}{hint}"
        from relxfer.data.languages import languages_in

        try:
            languages_in(name)
        except SpecError as e:
            return str(e)
        return None

    def _resolve_group(self, i: int) -> Iterator[Problem]:
        known = self._source_languages()
        group, where = self.raw["eval"]["groups"][i], ("eval", "groups", i)
        codes, family = group.get("languages"), group.get("family")
        # A family is checked even beside explicit languages: it becomes the group's label.
        bad = list(self._family(family, known, (*where, "family"), selects=codes is None)) if family is not None else []
        if codes is None:
            if family is None:
                bad.append(Problem(where, "a group needs `languages` or a `family` to select them"))
            codes = [] if bad else self._members(family, known)
        bad += [p for j, code in enumerate(codes) for p in self._language(code, known, (*where, "languages", j))]
        yield from bad
        if not bad:  # (with a problem elsewhere in the group the spec is refused anyway)
            if family is None:
                family = known[codes[0]] if known is not None else _belebele_genus(codes[0])
            # A name or role with a schema problem of its own still lets the languages be checked
            # (the spec is refused for that problem, so the stand-in role is never used).
            declared = group.get("role")
            role = GroupRole(declared) if declared in [r.value for r in GroupRole] else GroupRole.CONTROL
            self.groups.append(EvalGroup(str(group.get("name")), role, family, tuple(codes)))

    @staticmethod
    def _members(family: str, known: dict[str, str] | None) -> list[str]:
        if known is not None:
            return [c for c, f in known.items() if f.lower() == family.lower()]
        from relxfer.data.languages import languages_in

        return list(languages_in(family))

    def _train_languages(self) -> Iterator[Problem]:
        known = self._source_languages()
        for j, code in enumerate(self.raw["train"]["languages"]):
            yield from self._language(code, known, ("train", "languages", j))

    def _groups_disjoint(self) -> Iterator[Problem]:
        seen: dict[str, str] = {}
        for group in self.groups:
            for code in group.languages:
                if code in seen:
                    yield Problem(("eval", "groups"), f"language '{code}' is in both '{seen[code]}' and '{group.name}'")
                seen[code] = group.name

    # --- conditions, prompt, models ---------------------------------------------------------

    def _conditions_have_a_finetune(self) -> Iterator[Problem]:
        needs_finetune = [c for c in self.raw["conditions"] if Condition(c).uses_adapter]
        if needs_finetune and "finetune" not in self.raw:
            yield Problem(
                ("conditions",),
                f"condition '{needs_finetune[0]}' needs a fine-tune, but the spec declares no `finetune` section",
            )

    def _finetunes_fit(self) -> Iterator[Problem]:
        """A fine-tune must fit the resources its model declares (relxfer.spec.memory)."""
        if "finetune" not in self.raw or not any(Condition(c).uses_adapter for c in self.raw["conditions"]):
            return
        from relxfer.spec.memory import misfit

        finetune = FinetuneSpec.from_dict(self.raw["finetune"])
        for i, model in enumerate(self.raw["models"]):
            problem = misfit(ModelSpec.from_dict(model), finetune)
            if problem:
                yield Problem(("models", i, "resources"), problem)

    def _prompt_options(self) -> Iterator[Problem]:
        from relxfer.data.prompts import (
            PromptBuilder,  # the presets live there; building one checks the options
        )

        try:
            PromptBuilder.from_spec({**self.raw["prompt"], "chat_template": False})
        except SpecError as e:
            yield Problem(("prompt",), str(e))
        labels, n_options = self.raw["prompt"]["labels"], self._n_options()
        if n_options is not None and len(labels) != n_options:
            yield Problem(
                ("prompt", "labels"), f"{len(labels)} labels for {n_options} answer options; give exactly {n_options}"
            )

    def _n_options(self) -> int | None:
        """Options per item as the source declares them; None when only the rows tell (a list
        column: each row is checked against the labels as it is loaded)."""
        source = self.raw["data"]["source"] if isinstance(self.raw.get("data"), dict) else None
        if not isinstance(source, dict) or source.get("kind") != "parallel":
            return N_OPTIONS
        columns = source.get("columns")
        options = columns.get("options") if isinstance(columns, dict) else None
        if isinstance(options, list):
            return len(options)
        if options is None and isinstance(source.get("choices"), list):
            return len(source["choices"])
        return None

    def _models(self) -> Iterator[Problem]:
        names: list[str] = []
        for i, model in enumerate(self.raw["models"]):
            if model["name"] in names:
                yield Problem(("models", i, "name"), f"duplicate model name '{model['name']}'")
            names.append(model["name"])
            yield from _builtin_source(model["source"], ("models", i, "source"))
            problem = local_source_problem(model["source"], model.get("gguf_file"))
            if problem:
                yield Problem(("models", i, "source"), problem)


def _builtin_source(source: str, where: Pointer) -> Iterator[Problem]:
    """A `builtin:` source must name a built-in model; a source with another `scheme:` (no hub id
    has a colon) that is not a file either is most likely a mistyped built-in."""
    if source in BUILTIN_MODEL_IDS:
        return
    known = ", ".join(BUILTIN_MODEL_IDS)
    hint = did_you_mean(close_matches(source, BUILTIN_MODEL_IDS))
    if source.startswith("builtin:"):
        yield Problem(where, f"unknown built-in model {source!r}{hint or '; built-in models: ' + known}")
    elif ":" in source and not os.path.exists(os.path.expanduser(source)) and hint:
        yield Problem(where, f"{source!r} is not a hub id (org/name), a local directory or a built-in model{hint}")


def is_local_path(source: str) -> bool:
    """A source is a local path when it is absolute, starts with '.' or '~', or exists on disk;
    anything else of the form 'org/name' is a hub id."""
    return source.startswith(("/", ".", "~")) or os.path.exists(source)


def local_source_problem(source: str, gguf_file: str | None = None) -> str | None:
    """What is wrong with a local model directory (relative to the working directory, as loading
    reads it): missing, unreadable, no checkpoint in it. None for a sound one, a hub id or a
    built-in. Checked at validate, so a typo in a path never reaches `run`."""
    if source.startswith("builtin:") or not is_local_path(source):
        return None
    path = Path(source).expanduser()
    if not path.is_dir():
        return f"model directory {str(path)!r} does not exist"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"model directory {str(path)!r} is not readable"
    if not (path / "config.json").is_file() and not gguf_file:
        return f"model directory {str(path)!r} has no config.json (not a transformers checkpoint)"
    return None


def _unnegated(name: str) -> str:
    """'non-Semitic' -> 'Semitic': a control group is often labelled by what it is not."""
    return name[4:] if name.lower().startswith("non-") else name


def _belebele_genus(code: str) -> str:
    from relxfer.data.languages import language

    return language(code).genus
