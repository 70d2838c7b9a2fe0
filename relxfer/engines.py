"""Engines: where a model's cells run. Each model names one engine for evaluation and one for
fine-tuning (`models[i].engines` in the spec, both `local` by default); this module maps a kind
to its implementation and to the settings of it that can change a cell's result.

Implementations are imported only when a cell needs them (`relxfer validate` and `plan` never
import torch or a client library), by the "module:Class" paths below. A new engine is a new
module behind `relxfer.backends.base.EvaluationEngine` or `relxfer.trainers.base.Trainer` plus
one line here, never a branch in the runner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .spec import Spec


@dataclass(frozen=True)
class EngineEntry:
    path: str  # "module:Class", imported on first use
    # Settings of the engine's spec entry that change results (part of cell keys); None means
    # the engine adds nothing to the key, which keeps `local` cells' keys what they always were.
    result_fields: tuple[str, ...] | None


EVALUATION_ENGINES: dict[str, EngineEntry] = {
    "local": EngineEntry("relxfer.backends.local_engine:LocalEngine", None),
    "tinker": EngineEntry("relxfer.backends.tinker_engine:TinkerEngine", ("base_model",)),
}

FINETUNE_ENGINES: dict[str, EngineEntry] = {
    "local": EngineEntry("relxfer.trainers.local:LocalTrainer", None),
    # FSDP2 (relxfer.finetune.parallel): the world size draws LoRA dropout masks per rank and
    # mixed precision changes the arithmetic; sharding and loading settings change nothing.
    "torchrun": EngineEntry("relxfer.trainers.torchrun:TorchrunTrainer", ("nproc_per_node", "mixed_precision")),
    "ray": EngineEntry("relxfer.trainers.ray_train:RayTrainer", ("num_workers", "mixed_precision")),
    "tinker": EngineEntry("relxfer.trainers.tinker:TinkerTrainer", ("base_model",)),
}


@dataclass
class EngineContext:
    """What an engine may use: the resolved model entry and spec, the cache directory, and the
    runner's report line and progress-bar switch. Engines never talk to MLflow: what they want
    recorded they return (`run_tags`, `log_files`) and the runner logs it."""

    model: dict
    spec: "Spec"
    cache_dir: Path
    report: Callable[[str], None] = lambda _: None
    progress: bool = True


def _entry(table: dict[str, EngineEntry], kind: str, stage: str) -> EngineEntry:
    try:
        return table[kind]
    except KeyError:  # the schema only admits known kinds: this is a bug, not bad input
        raise AssertionError(f"no {stage} engine of kind {kind!r}") from None


def _load(entry: EngineEntry):
    module, name = entry.path.split(":")
    return getattr(importlib.import_module(module), name)


def evaluation_engine(context: EngineContext):
    """The evaluation engine of `context.model` (not started: engines start on first use)."""
    config = context.model["engines"]["evaluate"]
    return _load(_entry(EVALUATION_ENGINES, config["kind"], "evaluation"))(config, context)


def trainer(context: EngineContext):
    """The fine-tuning engine of `context.model`."""
    config = context.model["engines"]["finetune"]
    return _load(_entry(FINETUNE_ENGINES, config["kind"], "fine-tuning"))(config, context)


def _identity(table: dict[str, EngineEntry], config: dict, stage: str) -> dict | None:
    fields = _entry(table, config["kind"], stage).result_fields
    if fields is None:
        return None
    return {"kind": config["kind"], **{f: config.get(f) for f in fields}}


def evaluation_identity(model: dict) -> dict | None:
    return _identity(EVALUATION_ENGINES, model["engines"]["evaluate"], "evaluation")


def finetune_identity(model: dict) -> dict | None:
    return _identity(FINETUNE_ENGINES, model["engines"]["finetune"], "fine-tuning")


def describe(config: dict) -> str:
    """One short line for `relxfer plan`: the kind and its settings."""
    settings = ", ".join(f"{k}={v}" for k, v in config.items() if k != "kind" and v not in (None, [], {}))
    return config["kind"] + (f" ({settings})" if settings else "")
