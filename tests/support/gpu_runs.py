"""What the GPU benchmarks (bench/gpu_check.py, bench/gpu_flagship.py) share: waiting for the
device before reading a clock, the machine and library versions a result came from, and a
fine-tune through one of relxfer's engines, started as the runner starts it."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

GIB = 2**30


def synchronize(device) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> dict:
    """The device, the versions of what ran on it and relxfer's commit (None outside a git
    checkout, as where only a copy of the files travelled)."""
    from relxfer.provenance import relxfer_git_state
    from relxfer.train.records import versions

    git = relxfer_git_state()
    report: dict[str, object] = {"device": "cpu", "gpu_memory_gib": None, "cuda": torch.version.cuda, **versions()}
    report["relxfer_commit"] = None if git is None else git.commit + ("-dirty" if git.dirty else "")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report |= {"device": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 2)}
    return report


def finetune_engine(kind: str, **settings):
    """A model's `engines.finetune` entry of `kind`, the schema's defaults filled in."""
    from relxfer.spec.defaults import section_defaults
    from relxfer.spec.types import finetune_engine_from_dict

    return finetune_engine_from_dict(section_defaults(f"{kind}FinetuneEngine", {"kind": kind, **settings}))


def engine_finetune(model, finetune, engine, examples, out_dir: Path, cache_dir: Path, on_step=None):
    """(TrainResult, wall seconds) of `examples` fine-tuned on `model` (a ModelSpec) with the
    recipe `finetune` (a FinetuneSpec) through the engine `engine` (an `engines.finetune` entry),
    through the same Trainer interface the runner uses."""
    from relxfer.spec.engines import EngineContext, trainer
    from relxfer.train.base import TrainRequest

    entry = replace(model, engines=replace(model.engines, finetune=engine))
    context = EngineContext(entry, SimpleNamespace(finetune=finetune), cache_dir)  # type: ignore[arg-type]
    request = TrainRequest(entry, finetune, examples, out_dir, 0, cache_dir, False)
    started = time.perf_counter()
    result = trainer(context).train(request, on_step or (lambda step, metrics: None))
    return result, time.perf_counter() - started
