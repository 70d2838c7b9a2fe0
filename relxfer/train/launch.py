"""What the distributed fine-tuning engines (torchrun, Ray Train) share in the parent process:
the request the ranks read, the built-in model built once before any rank starts, the relay of
rank 0's reports, the checks before anything runs, and the run's tags."""

from __future__ import annotations

import json
import time
from pathlib import Path

from relxfer.errors import ModelError
from relxfer.spec.engines import EngineContext
from relxfer.spec.memory import finetune_tags
from relxfer.spec.types import FinetuneMethod, FsdpFinetuneEngine, RayFinetuneEngine, TorchrunFinetuneEngine
from relxfer.train.base import TrainRequest


def finished(request: TrainRequest, engine: FsdpFinetuneEngine, world_size: int):
    """The stored result when the cell's directory holds this run's finished adapter (nothing to
    launch), else None. A finished run of other settings is refused, as in one process."""
    from relxfer.train.parallel import fsdp_identity
    from relxfer.train.records import config_hash, finished_result

    run_hash = config_hash(
        request.model,
        request.finetune,
        request.examples,
        request.seed,
        fsdp_identity(world_size, engine),
    )
    return finished_result(Path(request.out_dir), run_hash)


def launch_dir(request: TrainRequest) -> Path:
    path = Path(request.out_dir) / "launch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_request(request: TrainRequest, engine: FsdpFinetuneEngine, events: Path | None) -> dict:
    """The request every rank reads (JSON: the resolved dict forms of the settings, parsed back
    by relxfer.train.worker), with the built-in model already built: ranks never race each
    other to build it."""
    from relxfer.models.loading import resolve_source

    resolve_source(request.model, request.cache_dir)
    return {
        "model": request.model.to_dict(),
        "finetune": request.finetune.to_dict(),
        "examples": [list(e) for e in request.examples],
        "out_dir": str(request.out_dir),
        "seed": request.seed,
        "cache_dir": str(request.cache_dir),
        "engine": engine.to_dict(),
        "events": str(events) if events else None,
    }


def new_events_file(request: TrainRequest) -> Path:
    """A fresh events file per launch, so the parent reads only this launch's reports."""
    return launch_dir(request) / f"events-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6}.jsonl"


def save_request(payload: dict, request: TrainRequest) -> Path:
    path = launch_dir(request) / "request.json"
    path.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    return path


def progress_bar(request: TrainRequest, name: str):
    """A bar over the run's optimizer steps in the parent (the ranks draw none)."""
    from tqdm.auto import tqdm

    from relxfer.train.data import step_counts

    steps, _ = step_counts(len(request.examples), request.finetune.training)
    return tqdm(total=steps, desc=f"fine-tuning {name}", disable=not request.progress)


def check_engine(context: EngineContext, world_size: int, gpus_per_rank: float) -> None:
    """Refuse, before any run exists, settings that cannot work: mixed precision that would cast
    packed 4-bit weights, or more GPU ranks than the cell declares GPUs."""
    config = context.model.engines.finetune
    assert isinstance(config, (TorchrunFinetuneEngine, RayFinetuneEngine))  # the FSDP2 engines call this
    name = context.model.name
    finetune = context.spec.finetune
    param_dtype = config.mixed_precision.param_dtype
    if finetune is not None and finetune.method is FinetuneMethod.QLORA and param_dtype:
        storage = config.fsdp.quant_storage
        compute = finetune.quantization.compute_dtype
        if storage != "compute_dtype" or param_dtype != compute:
            raise ModelError(
                f"model {name!r}: engines.finetune.mixed_precision.param_dtype {param_dtype!r} would cast the packed "
                f"4-bit weights (stored as {compute if storage == 'compute_dtype' else 'uint8'}); use null or "
                f"{compute!r} with fsdp.quant_storage 'compute_dtype'"
            )
    gpus = context.model.resources.gpus
    if gpus and gpus_per_rank and world_size * gpus_per_rank > gpus and isinstance(config, TorchrunFinetuneEngine):
        raise ModelError(
            f"model {name!r}: torchrun with nproc_per_node {world_size} needs {world_size} GPUs on one node; "
            f"resources.gpus declares {gpus}"
        )


def run_tags(kind: str, context: EngineContext, world_size: int) -> dict[str, str]:
    return {"engine": kind, "world_size": str(world_size), **finetune_tags(context.model, context.spec.finetune)}
