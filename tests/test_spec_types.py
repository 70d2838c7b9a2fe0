"""The typed spec (relxfer.spec.types) agrees with schemas/spec.schema.json: every property of
every schema object the types model is a field of its class and back, a field may be None
exactly where the schema allows null or leaves the property out, and every enum's values are the
schema's. A spec parses into the types and gives back the resolved dict it came from."""

from __future__ import annotations

import dataclasses
import json
import types
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest

from relxfer.spec import types as spec_types
from relxfer.spec.defaults import DEFAULTED_SECTIONS, load_schema
from relxfer.spec.load import load_spec
from relxfer.spec.schema_problems import resolve_ref
from relxfer.spec.types import (
    Condition,
    EvaluateEngineKind,
    FinetuneEngineKind,
    FinetuneMethod,
    GroupRole,
    SourceKind,
    Spec,
    SpecPart,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()

# Where each class's object lives in the schema (a JSON pointer into it).
CLASSES: dict[type[SpecPart], str] = {
    spec_types.Spec: "",
    spec_types.DataSpec: "/properties/data",
    spec_types.SplitSpec: "/properties/data/properties/split",
    spec_types.SyntheticSource: "/$defs/syntheticSource",
    spec_types.SyntheticLanguage: "/$defs/syntheticSource/properties/languages/items",
    spec_types.BelebeleSource: "/$defs/belebeleSource",
    spec_types.ParallelSource: "/$defs/parallelSource",
    spec_types.ParallelSplits: "/$defs/parallelSource/properties/splits",
    spec_types.ColumnMap: "/$defs/parallelSource/properties/columns",
    spec_types.TrainSpec: "/properties/train",
    spec_types.EvalSpec: "/properties/eval",
    spec_types.GroupSpec: "/properties/eval/properties/groups/items",
    spec_types.PromptSpec: "/properties/prompt",
    spec_types.ChatTemplateSettings: "/$defs/chatTemplateSettings",
    spec_types.CotSpec: "/properties/cot",
    spec_types.EvaluationSpec: "/properties/evaluation",
    spec_types.AnalysisSpec: "/properties/analysis",
    spec_types.ModelSpec: "/$defs/model",
    spec_types.EnginesSpec: "/$defs/model/properties/engines",
    spec_types.Resources: "/$defs/resources",
    spec_types.LocalEvaluateEngine: "/$defs/localEvaluateEngine",
    spec_types.TinkerEvaluateEngine: "/$defs/tinkerEvaluateEngine",
    spec_types.VllmEvaluateEngine: "/$defs/vllmEvaluateEngine",
    spec_types.OpenaiEvaluateEngine: "/$defs/openaiEvaluateEngine",
    spec_types.ServerRequests: "/$defs/serverRequests",
    spec_types.VllmLaunch: "/$defs/vllmLaunch",
    spec_types.LocalFinetuneEngine: "/$defs/localFinetuneEngine",
    spec_types.TorchrunFinetuneEngine: "/$defs/torchrunFinetuneEngine",
    spec_types.RayFinetuneEngine: "/$defs/rayFinetuneEngine",
    spec_types.TinkerFinetuneEngine: "/$defs/tinkerFinetuneEngine",
    spec_types.FsdpMixedPrecision: "/$defs/fsdpMixedPrecision",
    spec_types.FsdpSharding: "/$defs/fsdpSharding",
    spec_types.FinetuneSpec: "/$defs/finetune",
    spec_types.Quantization: "/$defs/quantization",
    spec_types.LoraSpec: "/$defs/finetune/properties/lora",
    spec_types.TrainingSpec: "/$defs/finetune/properties/training",
}
# Fields that are not schema properties, and schema properties no class models.
LOADED = {spec_types.Spec: set(Spec.LOADED)}
IGNORED = {spec_types.Spec: {"$schema"}}  # for editors only
# Never None once loaded: the experiment resolves to the study's name, and the sections the
# loader fills even when a spec leaves them out (relxfer.spec.defaults.fill_defaults).
NEVER_NONE = {
    (spec_types.Spec, "experiment"),
    *((spec_types.Spec, section) for section in DEFAULTED_SECTIONS),
    (spec_types.DataSpec, "split"),
    *((spec_types.FinetuneSpec, part) for part in ("quantization", "lora", "training")),
}


def node(pointer: str) -> dict[str, Any]:
    value: Any = SCHEMA
    for part in pointer.split("/")[1:]:
        value = value[part]
    return resolve_ref(value, SCHEMA)


def fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def choices(hint: Any) -> tuple[list[Any], bool]:
    """(the types a hint allows besides None, whether it allows None)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def spec_parts(cls: type, seen: set[type]) -> set[type]:
    """Every SpecPart class reachable from `cls` through its fields."""
    if cls in seen:
        return seen
    seen.add(cls)

    def visit(hint: Any) -> None:
        if isinstance(hint, type) and issubclass(hint, SpecPart):
            spec_parts(hint, seen)
        for arg in get_args(hint):
            visit(arg)

    for hint in fields(cls).values():
        visit(hint)
    return seen


def test_every_class_the_spec_reaches_is_mapped_to_the_schema():
    assert spec_parts(Spec, set()) == set(CLASSES)


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_schema_properties_and_fields_agree(cls):
    schema = node(CLASSES[cls])
    if cls.SCHEMA is not None:  # from_partial completes this very definition
        assert CLASSES[cls] == f"/$defs/{cls.SCHEMA}"
    properties = set(schema["properties"]) - IGNORED.get(cls, set())
    assert set(fields(cls)) - LOADED.get(cls, set()) == properties
    required = set(schema.get("required", ()))
    for name in properties:
        prop = schema["properties"][name]
        resolved = resolve_ref(prop, SCHEMA)
        types_ = resolved.get("type", [])
        nullable = "null" in (types_ if isinstance(types_, list) else [types_]) or None in resolved.get("enum", ())
        left_out = name not in required and "default" not in prop and "default" not in resolved
        _, optional = choices(fields(cls)[name])
        expected = (nullable or left_out) and (cls, name) not in NEVER_NONE
        assert optional == expected, f"{cls.__name__}.{name}: None allowed {optional}, schema {expected}"


def vocabulary(hint: Any) -> set[Any] | None:
    """The values a Literal or Enum field allows (None: not a closed vocabulary)."""
    allowed, _ = choices(hint)
    values: set[Any] = set()
    for choice in allowed:
        if get_origin(choice) is Literal:
            values |= {a.value if isinstance(a, Enum) else a for a in get_args(choice)}
        elif isinstance(choice, type) and issubclass(choice, Enum):
            values |= {m.value for m in choice}
        else:
            return None
    return values


def schema_values(prop: dict[str, Any]) -> set[Any]:
    prop = resolve_ref(prop, SCHEMA)
    if "const" in prop:
        return {prop["const"]}
    if "kind" in prop.get("properties", {}):  # an object chosen by its `kind`
        return schema_values(prop["properties"]["kind"])
    if "oneOf" in prop:
        return set().union(*(schema_values(branch) for branch in prop["oneOf"]))
    return {v for v in prop["enum"] if v is not None}


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_closed_vocabularies_equal_the_schemas_enums(cls):
    schema = node(CLASSES[cls])
    for name, hint in fields(cls).items():
        if name in LOADED.get(cls, set()):
            continue
        prop = resolve_ref(schema["properties"][name], SCHEMA)
        if "items" in prop:  # a list of enum values
            prop, hint = resolve_ref(prop["items"], SCHEMA), get_args(hint)[0]
        values = vocabulary(hint)
        has_enum = "enum" in prop or "const" in prop
        if values is None:
            assert not has_enum, f"{cls.__name__}.{name}: the schema closes it; the type does not"
            continue
        if not has_enum and "oneOf" in prop:  # `all-linear` or a list of module names
            prop = next(b for b in prop["oneOf"] if "const" in b)
        assert values == schema_values(prop), f"{cls.__name__}.{name}"


def test_enums_equal_the_schemas_vocabularies():
    defs = SCHEMA["$defs"]
    assert {c.value for c in Condition} == set(SCHEMA["properties"]["conditions"]["items"]["enum"])
    groups = SCHEMA["properties"]["eval"]["properties"]["groups"]["items"]
    assert {r.value for r in GroupRole} == set(groups["properties"]["role"]["enum"])
    assert {k.value for k in SourceKind} == schema_values(SCHEMA["properties"]["data"]["properties"]["source"])
    assert {k.value for k in EvaluateEngineKind} == schema_values(defs["evaluateEngine"])
    assert {k.value for k in FinetuneEngineKind} == schema_values(defs["finetuneEngine"])
    assert {m.value for m in FinetuneMethod} == set(defs["finetune"]["properties"]["method"]["enum"])


def test_conditions_know_their_adapter_and_chain_of_thought():
    assert [c for c in Condition if c.uses_adapter] == [Condition.FINETUNED, Condition.FINETUNED_COT]
    assert [c for c in Condition if c.uses_cot] == [Condition.COT, Condition.FINETUNED_COT]
    # Members are their strings: in tags, run names, JSON and dict keys.
    assert f"{Condition.FINETUNED_COT}" == str(Condition.FINETUNED_COT) == "finetuned_cot"
    assert json.dumps([Condition.COT]) == '["cot"]' and {"cot": 1}[Condition.COT] == 1


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "specs").glob("*.json")))
def test_every_shipped_spec_parses_and_gives_back_its_resolved_dict(name, monkeypatch, belebele_dir, sib200_dir):
    monkeypatch.setenv("BELEBELE_DIR", str(belebele_dir))
    monkeypatch.setenv("SIB200_DIR", str(sib200_dir))
    spec = load_spec(REPO / "specs" / name)
    document = spec.to_dict()
    expected = {k: v for k, v in spec.raw.items() if k != "$schema"}
    expected.setdefault("experiment", spec.name)
    assert document == expected
    assert list(document) == list(expected)  # the spec's own key order (plan shows it)
    for model in spec.models:
        assert type(model.engines.evaluate).from_dict(model.engines.evaluate.to_dict()) == model.engines.evaluate


def test_from_partial_fills_the_schemas_defaults_and_refuses_bad_settings():
    from relxfer.errors import ModelError, SpecError
    from relxfer.spec.types import FinetuneSpec, ModelSpec, TorchrunFinetuneEngine

    finetune = FinetuneSpec.from_partial({"training": {"max_steps": 3}})
    assert finetune.method is FinetuneMethod.QLORA and finetune.lora.r == 16 and finetune.training.max_steps == 3
    assert finetune.quantization.compute_dtype == "bfloat16"
    torchrun = TorchrunFinetuneEngine.from_partial({"nproc_per_node": 2})
    assert torchrun.kind is FinetuneEngineKind.TORCHRUN and torchrun.fsdp.quant_storage == "compute_dtype"
    with pytest.raises(SpecError, match=r"^model: /dtype: 'float8' is not allowed here"):
        ModelSpec.from_partial({"name": "m", "source": "builtin:tiny-llama", "dtype": "float8"})
    with pytest.raises(ModelError, match=r"^finetune: /method: 'full' is not allowed here"):
        FinetuneSpec.from_partial({"method": "full"}, ModelError)
