"""A validated spec as frozen dataclasses: one class per object of schemas/spec.schema.json (one
per engine `kind`), enums for its closed vocabularies. The schema stays the contract: it is
validated and its defaults are filled (relxfer.spec.defaults) before a dict is parsed here, so
parsing only converts, never checks or defaults. `to_dict` gives the resolved dict back, key for
key and in the order the spec wrote it (cell keys hash these dict forms)."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from relxfer.errors import SpecError
from relxfer.spec.defaults import section_defaults

# --- closed vocabularies -------------------------------------------------------------------


class SpecEnum(str, Enum):
    """A string vocabulary of the schema: members equal, hash and format as their values, so
    tags, run names and JSON show the plain string."""

    def __str__(self) -> str:
        return str(self.value)


class Condition(SpecEnum):
    BASELINE = "baseline"
    FINETUNED = "finetuned"
    COT = "cot"
    FINETUNED_COT = "finetuned_cot"

    @property
    def uses_adapter(self) -> bool:
        """Evaluated with the fine-tuned LoRA adapter (one cell per fine-tune seed)."""
        return self in (Condition.FINETUNED, Condition.FINETUNED_COT)

    @property
    def uses_cot(self) -> bool:
        """The model reasons first, then its answer label is scored."""
        return self in (Condition.COT, Condition.FINETUNED_COT)


class GroupRole(SpecEnum):
    RELATED = "related"
    CONTROL = "control"


class RunStatus(SpecEnum):
    """What became of a cell in a run of a spec."""

    FINISHED = "FINISHED"  # ran now
    FAILED = "FAILED"  # ran and failed
    SKIPPED = "SKIPPED"  # a FINISHED run of the same key already exists
    NOT_RUN = "NOT_RUN"  # not started: what it needs failed, or the study stopped first


class SourceKind(SpecEnum):
    SYNTHETIC = "synthetic"
    BELEBELE = "belebele"
    PARALLEL = "parallel"


class EvaluateEngineKind(SpecEnum):
    LOCAL = "local"
    TINKER = "tinker"
    VLLM = "vllm"
    OPENAI = "openai"


class FinetuneEngineKind(SpecEnum):
    LOCAL = "local"
    TORCHRUN = "torchrun"
    RAY = "ray"
    TINKER = "tinker"


class FinetuneMethod(SpecEnum):
    QLORA = "qlora"
    LORA = "lora"


# Smaller vocabularies, read as plain strings.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]
ParamDtype = Literal["bfloat16", "float16", "float32"]
ReduceDtype = Literal["float32", "bfloat16"]
QuantType = Literal["nf4", "fp4"]
QuantStorage = Literal["compute_dtype", "uint8"]
Scoring = Literal["auto", "label_ids", "prompt_logprobs", "echo"]
LrScheduler = Literal["linear", "cosine", "constant"]
SplitUnit = Literal["question", "passage"]
PromptPreset = Literal["relxfer-v1", "lm-eval-belebele", "topic-v1"]
DataFormat = Literal["jsonl", "csv", "tsv", "parquet"]
AnswerFormat = Literal["number", "index", "letter", "text"]
Recipe = Literal["belebele", "sib200"]
InstructionLanguage = Literal["en", "target"]
Alphabet = Literal["shared", "disjoint"]
Architecture = Literal["dense", "moe"]
Backend = Literal["transformers"]
AnalysisScale = Literal["logit", "raw"]

# --- parsing and the dict form ---------------------------------------------------------------

P = TypeVar("P", bound="SpecPart")


@dataclass(frozen=True, kw_only=True)
class SpecPart:
    """One object of the schema. `SCHEMA` names its `$defs` entry where it has one (then
    `from_partial` completes a partial dict with the schema's defaults)."""

    SCHEMA: ClassVar[str | None] = None

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any]) -> P:
        """Parse a validated dict with its defaults filled."""
        hints = get_type_hints(cls)
        values = {f.name: _parse(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}
        part = cls(**values)
        # The spec's own key order, so `to_dict` and what is shown follow the file.
        object.__setattr__(part, "_order", tuple(k for k in data if k in values))
        return part

    @classmethod
    def from_partial(cls: type[P], partial: Mapping[str, Any] | None = None, error: type[Exception] = SpecError) -> P:
        """A library call's way in: `partial` completed with the schema's defaults, validated
        (a problem raises `error`) and parsed."""
        if cls.SCHEMA is None:
            raise TypeError(f"{cls.__name__} is not a $defs section of the schema")
        settings = dict(partial or {})
        kind = next((f.default for f in dataclasses.fields(cls) if f.name == "kind"), None)
        if isinstance(kind, Enum):  # the class is the choice: its kind goes without saying
            settings.setdefault("kind", kind.value)
        return cls.from_dict(section_defaults(cls.SCHEMA, settings, error))

    def to_dict(self) -> dict[str, Any]:
        """The resolved dict this part was parsed from (an optional setting left out stays out)."""
        order: tuple[str, ...] = getattr(self, "_order", ())
        names = order or tuple(
            f.name
            for f in dataclasses.fields(self)
            if not (f.metadata.get("optional") and getattr(self, f.name) is None)
        )
        return {name: _unparse(getattr(self, name)) for name in names}


def optional() -> Any:
    """A setting the schema neither requires nor defaults: None when the spec leaves it out."""
    return field(default=None, metadata={"optional": True})


def _parse(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        choices = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        parts = [c for c in choices if isinstance(c, type) and issubclass(c, SpecPart)]
        if len(parts) > 1:  # a choice by `kind`
            return next(c for c in parts if _kind_of(c) == value["kind"]).from_dict(value)
        if parts and isinstance(value, Mapping):  # an object beside plain values (a flag)
            return parts[0].from_dict(value)
        if isinstance(value, list):
            return _parse(next(c for c in choices if get_origin(c) is tuple), value)
        return _parse(choices[0], value) if len(choices) == 1 else value
    if origin is Literal:
        member = get_args(hint)[0]
        return type(member)(value) if isinstance(member, Enum) else value
    if origin is tuple:
        return tuple(_parse(get_args(hint)[0], v) for v in value)
    if origin in (dict, Mapping):
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, SpecPart):
        return hint.from_dict(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    return value


def _unparse(value: Any) -> Any:
    if isinstance(value, SpecPart):
        return value.to_dict()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_unparse(v) for v in value]
    if isinstance(value, dict):
        return {k: _unparse(v) for k, v in value.items()}
    return value


def _kind_of(cls: type[SpecPart]) -> Any:
    """The `kind` a class of a choice stands for (its `kind` field's default)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "kind")


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SyntheticLanguage(SpecPart):
    code: str
    family: str
    overlap: float
    alphabet: Alphabet


@dataclass(frozen=True, kw_only=True)
class SyntheticSource(SpecPart):
    SCHEMA = "syntheticSource"
    kind: Literal[SourceKind.SYNTHETIC] = SourceKind.SYNTHETIC
    seed: int
    n_passages: int
    questions_per_passage: int
    facts_per_passage: int
    objects_per_category: int
    languages: tuple[SyntheticLanguage, ...]


@dataclass(frozen=True, kw_only=True)
class BelebeleSource(SpecPart):
    SCHEMA = "belebeleSource"
    kind: Literal[SourceKind.BELEBELE] = SourceKind.BELEBELE
    hub_id: str
    revision: str | None
    path: str | None  # expanded and absolute once loaded


@dataclass(frozen=True, kw_only=True)
class ParallelSplits(SpecPart):
    train: str
    eval: str


@dataclass(frozen=True, kw_only=True)
class ColumnMap(SpecPart):
    answer: str
    id: tuple[str, ...] | None = optional()
    group: str | None = optional()
    passage: str | None = optional()
    question: str | None = optional()
    options: tuple[str, ...] | str | None = optional()


@dataclass(frozen=True, kw_only=True)
class ParallelSource(SpecPart):
    """A declared parallel set; a `recipe` has been expanded into the settings left out
    (relxfer.spec.checks), so every setting here is what loading uses."""

    SCHEMA = "parallelSource"
    kind: Literal[SourceKind.PARALLEL] = SourceKind.PARALLEL
    recipe: Recipe | None = optional()
    hub_id: str | None = optional()
    config: str | dict[str, str] | None = optional()
    revision: str | None = optional()
    path: str | None = optional()  # expanded and absolute once loaded
    files: str | None = optional()
    format: DataFormat | None = optional()
    splits: ParallelSplits | None = optional()
    columns: ColumnMap | None = optional()
    answer_format: AnswerFormat | None = optional()
    choices: tuple[str, ...] | None = optional()


DataSource = SyntheticSource | BelebeleSource | ParallelSource


@dataclass(frozen=True, kw_only=True)
class SplitSpec(SpecPart):
    held_out: int
    unit: SplitUnit
    seed: int


@dataclass(frozen=True, kw_only=True)
class DataSpec(SpecPart):
    source: DataSource
    split: SplitSpec


@dataclass(frozen=True, kw_only=True)
class TrainSpec(SpecPart):
    languages: tuple[str, ...]
    max_items_per_language: int | None


@dataclass(frozen=True, kw_only=True)
class GroupSpec(SpecPart):
    """An evaluation group as declared (`EvalGroup` is the same group with its languages resolved)."""

    name: str
    role: GroupRole
    family: str | None = optional()
    languages: tuple[str, ...] | None = optional()


@dataclass(frozen=True, kw_only=True)
class EvalSpec(SpecPart):
    groups: tuple[GroupSpec, ...]


@dataclass(frozen=True)
class EvalGroup:
    """An evaluation group with its languages resolved (a family alone selects them) and its
    family label (declared, else the languages' own)."""

    name: str
    role: GroupRole
    family: str
    languages: tuple[str, ...]


# --- prompts, chain of thought, evaluation, analysis -----------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChatTemplateSettings(SpecPart):
    """The chat template with these settings (`true` in a spec is this with every default)."""

    SCHEMA = "chatTemplateSettings"
    template_args: dict[str, Any]
    system_prompt: str | None
    answer_prefix: str
    date: str
    reasoning_budget: int | None


# A prompt format as declared: raw completion (False), the chat template with its defaults
# (True), or the chat template with settings.
ChatTemplate = bool | ChatTemplateSettings


def chat_settings(declared: ChatTemplate) -> ChatTemplateSettings | None:
    """The settings a declared format means: None for a raw completion prompt, the schema's
    defaults for `true`."""
    if declared is False:
        return None
    if declared is True:
        return ChatTemplateSettings.from_partial({})
    return declared


@dataclass(frozen=True, kw_only=True)
class PromptSpec(SpecPart):
    preset: PromptPreset
    labels: tuple[str, ...]
    instruction_language: InstructionLanguage
    chat_template: ChatTemplate


@dataclass(frozen=True, kw_only=True)
class CotSpec(SpecPart):
    max_new_tokens: int
    stop: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class EvaluationSpec(SpecPart):
    batch_size: int | None
    max_items: int | None
    quantize_base: bool


@dataclass(frozen=True, kw_only=True)
class AnalysisSpec(SpecPart):
    scale: AnalysisScale
    reference: str


# --- engines ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LocalEvaluateEngine(SpecPart):
    SCHEMA = "localEvaluateEngine"
    kind: Literal[EvaluateEngineKind.LOCAL] = EvaluateEngineKind.LOCAL


@dataclass(frozen=True, kw_only=True)
class TinkerEvaluateEngine(SpecPart):
    SCHEMA = "tinkerEvaluateEngine"
    kind: Literal[EvaluateEngineKind.TINKER] = EvaluateEngineKind.TINKER
    base_model: str | None
    max_in_flight: int
    request_timeout_s: float
    max_retries: int


@dataclass(frozen=True, kw_only=True)
class ServerRequests(SpecPart):
    SCHEMA = "serverRequests"
    max_in_flight: int
    timeout_s: float
    max_retries: int
    serial_prompt_logprobs: bool | None


@dataclass(frozen=True, kw_only=True)
class VllmLaunch(SpecPart):
    SCHEMA = "vllmLaunch"
    tensor_parallel_size: int
    pipeline_parallel_size: int
    dtype: Dtype
    max_model_len: int | None
    gpu_memory_utilization: float
    max_lora_rank: int | None
    max_loras: int
    extra_args: tuple[str, ...]
    startup_timeout_s: float
    port: int | None


@dataclass(frozen=True, kw_only=True)
class ServerEngine(SpecPart):
    """The settings the two OpenAI-compatible engines share."""

    api_key_env: str | None
    served_model_name: str | None
    dtype: str | None
    max_lora_rank: int | None
    scoring: Scoring
    requests: ServerRequests


@dataclass(frozen=True, kw_only=True)
class VllmEvaluateEngine(ServerEngine):
    """A vLLM server relxfer launches (`launch`) or one already running (`base_url`)."""

    SCHEMA = "vllmEvaluateEngine"
    kind: Literal[EvaluateEngineKind.VLLM] = EvaluateEngineKind.VLLM
    base_url: str | None = optional()
    launch: VllmLaunch | None = optional()


@dataclass(frozen=True, kw_only=True)
class OpenaiEvaluateEngine(ServerEngine):
    SCHEMA = "openaiEvaluateEngine"
    kind: Literal[EvaluateEngineKind.OPENAI] = EvaluateEngineKind.OPENAI
    base_url: str
    launch: ClassVar[None] = None  # never launched by relxfer


EvaluateEngine = LocalEvaluateEngine | TinkerEvaluateEngine | VllmEvaluateEngine | OpenaiEvaluateEngine


@dataclass(frozen=True, kw_only=True)
class FsdpMixedPrecision(SpecPart):
    SCHEMA = "fsdpMixedPrecision"
    param_dtype: ParamDtype | None
    reduce_dtype: ReduceDtype


@dataclass(frozen=True, kw_only=True)
class FsdpSharding(SpecPart):
    SCHEMA = "fsdpSharding"
    reshard_after_forward: bool
    cpu_ram_efficient_loading: bool
    quant_storage: QuantStorage
    gradient_checkpointing: bool | None


@dataclass(frozen=True, kw_only=True)
class LocalFinetuneEngine(SpecPart):
    SCHEMA = "localFinetuneEngine"
    kind: Literal[FinetuneEngineKind.LOCAL] = FinetuneEngineKind.LOCAL


@dataclass(frozen=True, kw_only=True)
class TorchrunFinetuneEngine(SpecPart):
    SCHEMA = "torchrunFinetuneEngine"
    kind: Literal[FinetuneEngineKind.TORCHRUN] = FinetuneEngineKind.TORCHRUN
    nproc_per_node: int
    max_restarts: int
    mixed_precision: FsdpMixedPrecision
    fsdp: FsdpSharding


@dataclass(frozen=True, kw_only=True)
class RayFinetuneEngine(SpecPart):
    SCHEMA = "rayFinetuneEngine"
    kind: Literal[FinetuneEngineKind.RAY] = FinetuneEngineKind.RAY
    num_workers: int
    resources_per_worker: dict[str, float]
    address: str | None
    max_failures: int
    mixed_precision: FsdpMixedPrecision
    fsdp: FsdpSharding


@dataclass(frozen=True, kw_only=True)
class TinkerFinetuneEngine(SpecPart):
    SCHEMA = "tinkerFinetuneEngine"
    kind: Literal[FinetuneEngineKind.TINKER] = FinetuneEngineKind.TINKER
    base_model: str | None
    request_timeout_s: float


FinetuneEngine = LocalFinetuneEngine | TorchrunFinetuneEngine | RayFinetuneEngine | TinkerFinetuneEngine
# The FSDP2 engines: one training loop in several ranks.
FsdpFinetuneEngine = TorchrunFinetuneEngine | RayFinetuneEngine


@dataclass(frozen=True, kw_only=True)
class EnginesSpec(SpecPart):
    evaluate: EvaluateEngine
    finetune: FinetuneEngine


# --- models ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Resources(SpecPart):
    SCHEMA = "resources"
    gpus: int
    cpus: float
    memory_gb: float | None
    gpu_memory_gb: float | None


@dataclass(frozen=True, kw_only=True)
class ModelSpec(SpecPart):
    SCHEMA = "model"
    name: str
    source: str
    revision: str | None
    architecture: Architecture
    params_total_b: float | None
    params_active_b: float | None
    backend: Backend
    dtype: Dtype
    trust_remote_code: bool
    device_map: str
    gguf_file: str | None
    chat_template: ChatTemplate | None = optional()  # None: the spec's `prompt.chat_template`
    engines: EnginesSpec
    resources: Resources


# --- fine-tuning -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Quantization(SpecPart):
    SCHEMA = "quantization"
    load_in_4bit: bool
    quant_type: QuantType
    double_quant: bool
    compute_dtype: ComputeDtype


@dataclass(frozen=True, kw_only=True)
class LoraSpec(SpecPart):
    r: int
    alpha: float
    dropout: float
    target_modules: Literal["all-linear"] | tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TrainingSpec(SpecPart):
    epochs: float
    max_steps: int | None
    learning_rate: float
    lr_scheduler: LrScheduler
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    batch_size: int
    grad_accum_steps: int
    max_seq_len: int
    gradient_checkpointing: bool
    checkpoint_every: int


@dataclass(frozen=True, kw_only=True)
class FinetuneSpec(SpecPart):
    """The shared fine-tuning recipe: method, 4-bit loading, adapter shape, optimisation."""

    SCHEMA = "finetune"
    method: FinetuneMethod
    quantization: Quantization
    lora: LoraSpec
    training: TrainingSpec


# --- the study -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Spec(SpecPart):
    """A validated spec with every default filled in. `raw` is that full dict (logged as the
    parent run's resolved spec), `groups` the evaluation groups with their languages resolved,
    `experiment` the declared experiment or else the study's name."""

    # Not in the schema: where it was read, what it resolved to.
    path: Path
    raw: dict[str, Any]
    hash: str
    groups: tuple[EvalGroup, ...]
    # The schema's top-level properties.
    name: str
    description: str | None = optional()
    notes: str | None = optional()
    experiment: str
    data: DataSpec
    train: TrainSpec
    eval: EvalSpec
    models: tuple[ModelSpec, ...]
    finetune: FinetuneSpec | None = optional()
    prompt: PromptSpec
    conditions: tuple[Condition, ...]
    cot: CotSpec
    evaluation: EvaluationSpec
    seeds: tuple[int, ...]
    analysis: AnalysisSpec

    LOADED: ClassVar[tuple[str, ...]] = ("path", "raw", "hash", "groups")

    @classmethod
    def parse(cls, raw: dict[str, Any], path: Path, groups: tuple[EvalGroup, ...], hash: str) -> Spec:
        """`raw`: a spec that passed validation and checks, its defaults filled."""
        document = {k: v for k, v in raw.items() if k != "$schema"}
        document["experiment"] = raw.get("experiment") or raw["name"]
        loaded = {"path": path, "raw": raw, "hash": hash, "groups": groups}
        return cls.from_dict({**document, **loaded})

    def to_dict(self) -> dict[str, Any]:
        """The resolved document (`raw` without `$schema`, with `experiment` resolved)."""
        return {k: v for k, v in super().to_dict().items() if k not in self.LOADED}

    @property
    def train_languages(self) -> tuple[str, ...]:
        return self.train.languages

    @property
    def eval_languages(self) -> tuple[str, ...]:
        return tuple(code for g in self.groups for code in g.languages)

    @property
    def needs_finetune(self) -> bool:
        """Whether a condition evaluates a fine-tuned adapter (then every model is fine-tuned)."""
        return any(c.uses_adapter for c in self.conditions)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def chat_template(self, model: ModelSpec) -> ChatTemplate:
        """The model's prompt format as declared: its own, else the spec's."""
        return self.prompt.chat_template if model.chat_template is None else model.chat_template

    @property
    def eval_quantization(self) -> Quantization | None:
        """The 4-bit settings evaluation loads base models with: the fine-tune's, when it is a
        QLoRA and `evaluation.quantize_base` is on (the adapter is then evaluated on the base it
        was trained on); None otherwise."""
        ft = self.finetune
        if ft is not None and ft.method is FinetuneMethod.QLORA and self.evaluation.quantize_base:
            return ft.quantization
        return None


def evaluate_engine_from_dict(data: Mapping[str, Any]) -> EvaluateEngine:
    """An `engines.evaluate` entry (validated, defaults filled) as the class of its kind."""
    engine: EvaluateEngine = _parse(EvaluateEngine, data)
    return engine


def finetune_engine_from_dict(data: Mapping[str, Any]) -> FinetuneEngine:
    """An `engines.finetune` entry (validated, defaults filled) as the class of its kind."""
    engine: FinetuneEngine = _parse(FinetuneEngine, data)
    return engine
