"""Engines: where a model's cells run. Each model names one engine for evaluation and one for
fine-tuning (`models[i].engines` in the spec, both `local` by default); this module maps a kind
to its implementation and to the settings of it that can change a cell's result.

Implementations are imported only when a cell needs them (`relxfer validate` and `plan` never
import torch or a client library), by the "module:Class" paths below. A new engine is a new
module behind `relxfer.evaluate.base.EvaluationEngine` or `relxfer.train.base.Trainer` plus
one line here, never a branch in the runner.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from relxfer.spec.types import (
    EvaluateEngine,
    EvaluateEngineKind,
    FinetuneEngine,
    FinetuneEngineKind,
    ModelSpec,
    OpenaiEvaluateEngine,
    Quantization,
    Spec,
    VllmEvaluateEngine,
)


@dataclass(frozen=True)
class EngineEntry:
    path: str  # "module:Class", imported on first use
    # Settings of the engine's spec entry that change results (part of cell keys; a dotted name
    # reads a nested setting, e.g. "launch.dtype"); None means the engine adds nothing to the
    # key, so registering another engine never changes a `local` cell's key (its runs stay valid).
    result_fields: tuple[str, ...] | None
    # Whether evaluation loads the base model with the spec's 4-bit settings
    # (`spec.eval_quantization`, part of every evaluation key): the local engine does; a model
    # server runs the checkpoint as it is (its dtype is in `result_fields` instead).
    quantizes_base: bool = True


EVALUATION_ENGINES: dict[EvaluateEngineKind, EngineEntry] = {
    EvaluateEngineKind.LOCAL: EngineEntry("relxfer.evaluate.local_engine:LocalEngine", None),
    # A hosted service samples its own copy of the base model: no local 4-bit load.
    EvaluateEngineKind.TINKER: EngineEntry(
        "relxfer.evaluate.tinker_engine:TinkerEngine", ("base_model",), quantizes_base=False
    ),
    EvaluateEngineKind.VLLM: EngineEntry(
        "relxfer.evaluate.server_engine:ServerEngine", ("dtype", "launch.dtype"), quantizes_base=False
    ),
    EvaluateEngineKind.OPENAI: EngineEntry(
        "relxfer.evaluate.server_engine:ServerEngine", ("dtype",), quantizes_base=False
    ),
}

FINETUNE_ENGINES: dict[FinetuneEngineKind, EngineEntry] = {
    FinetuneEngineKind.LOCAL: EngineEntry("relxfer.train.local_trainer:LocalTrainer", None),
    # FSDP2 (relxfer.train.parallel): the world size draws LoRA dropout masks per rank and
    # mixed precision changes the arithmetic; sharding and loading settings change nothing.
    FinetuneEngineKind.TORCHRUN: EngineEntry(
        "relxfer.train.torchrun_trainer:TorchrunTrainer", ("nproc_per_node", "mixed_precision")
    ),
    FinetuneEngineKind.RAY: EngineEntry("relxfer.train.ray_trainer:RayTrainer", ("num_workers", "mixed_precision")),
    FinetuneEngineKind.TINKER: EngineEntry("relxfer.train.tinker_trainer:TinkerTrainer", ("base_model",)),
}


def register(stage: Literal["evaluate", "finetune"], kind: str, entry: EngineEntry | None) -> EngineEntry | None:
    """Put `entry` behind `kind` for `stage` ("evaluate" or "finetune"), or take `kind` away
    with None; returns the entry it replaces, so a caller can put that back. This is how an
    implementation from outside the package (a test double, an in-house engine) runs behind an
    existing kind: the spec and the cell keys stay the kind's own. A new kind also needs the
    schema to admit it."""
    # Keys are str-valued enums, so a plain kind string finds and replaces its member's entry.
    table: dict[Any, EngineEntry] = EVALUATION_ENGINES if stage == "evaluate" else FINETUNE_ENGINES
    previous = table.pop(kind, None)
    if entry is not None:
        table[kind] = entry
    return previous


@dataclass
class EngineContext:
    """What an engine may use: the resolved model entry and spec, the cache directory, and the
    runner's report line and progress-bar switch. Engines never talk to MLflow: what they want
    recorded they return (`run_tags`, `log_files`) and the runner logs it."""

    model: ModelSpec
    spec: Spec
    cache_dir: Path
    report: Callable[[str], None] = lambda _: None
    progress: bool = True


def _entry(table: dict[Any, EngineEntry], kind: Any, stage: str) -> EngineEntry:
    try:
        return table[kind]
    except KeyError:  # the schema only admits known kinds: this is a bug, not bad input
        raise AssertionError(f"no {stage} engine of kind {kind!r}") from None


def _load(entry: EngineEntry) -> Any:
    module, name = entry.path.split(":")
    return getattr(importlib.import_module(module), name)


def evaluation_engine(context: EngineContext) -> Any:
    """The evaluation engine of `context.model` (not started: engines start on first use), built
    with its typed settings."""
    config = context.model.engines.evaluate
    return _load(_entry(EVALUATION_ENGINES, config.kind, "evaluation"))(config, context)


def trainer(context: EngineContext) -> Any:
    """The fine-tuning engine of `context.model`, built with its typed settings."""
    config = context.model.engines.finetune
    return _load(_entry(FINETUNE_ENGINES, config.kind, "fine-tuning"))(config, context)


def _setting(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _identity(
    table: dict[Any, EngineEntry], config: EvaluateEngine | FinetuneEngine, stage: str
) -> dict[str, Any] | None:
    fields = _entry(table, config.kind, stage).result_fields
    if fields is None:
        return None
    settings = config.to_dict()
    return {"kind": config.kind.value, **{f: _setting(settings, f) for f in fields}}


def evaluation_identity(model: ModelSpec) -> dict[str, Any] | None:
    return _identity(EVALUATION_ENGINES, model.engines.evaluate, "evaluation")


def finetune_identity(model: ModelSpec) -> dict[str, Any] | None:
    return _identity(FINETUNE_ENGINES, model.engines.finetune, "fine-tuning")


def evaluation_quantization(spec: Spec, model: ModelSpec) -> Quantization | None:
    """The 4-bit settings `model`'s evaluation engine loads its base with (part of evaluation
    keys): the spec's for engines that load the base themselves, None for model servers."""
    entry = _entry(EVALUATION_ENGINES, model.engines.evaluate.kind, "evaluation")
    return spec.eval_quantization if entry.quantizes_base else None


def describe(config: EvaluateEngine | FinetuneEngine) -> str:
    """One short line for `relxfer plan`: the kind and its settings (offline: nothing is asked
    of a server)."""
    if isinstance(config, (VllmEvaluateEngine, OpenaiEvaluateEngine)):
        return _describe_server(config)
    settings = ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k != "kind" and v not in (None, [], {}))
    return str(config.kind) + (f" ({settings})" if settings else "")


def _describe_server(config: VllmEvaluateEngine | OpenaiEvaluateEngine) -> str:
    launch = config.launch
    if launch:
        shown: dict[str, Any] = {
            "tensor_parallel_size": launch.tensor_parallel_size,
            "pipeline_parallel_size": launch.pipeline_parallel_size,
            "dtype": launch.dtype,
            "max_model_len": launch.max_model_len,
            "gpu_memory_utilization": launch.gpu_memory_utilization,
            "max_lora_rank": launch.max_lora_rank,
            "extra_args": list(launch.extra_args),
        }
        if shown["pipeline_parallel_size"] == 1:
            del shown["pipeline_parallel_size"]
        settings = ", ".join(f"{k}={v}" for k, v in shown.items() if v not in (None, [], {}))
        where = f"{config.kind} launched by relxfer on 127.0.0.1 ({settings})"
    else:
        details = [
            f"model {config.served_model_name}" if config.served_model_name else "",
            f"dtype {config.dtype}" if config.dtype else "dtype not declared",
            f"key from ${config.api_key_env}" if config.api_key_env else "",
        ]
        where = f"{config.kind} server at {config.base_url} ({', '.join(d for d in details if d)})"
    return f"{where}, scoring {config.scoring}"
