"""What a fine-tune records about itself: its result, the hash of everything that decides it,
and the versions it ran with (in `adapter/relxfer_finetune.json`)."""

from __future__ import annotations

import hashlib
import json
import resource
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

import relxfer
from relxfer.errors import ModelError
from relxfer.models import tiny
from relxfer.provenance import TRAINING_PACKAGES, package_versions
from relxfer.spec.types import FinetuneSpec, ModelSpec

FINETUNE_JSON = "relxfer_finetune.json"


@dataclass
class TrainResult:
    adapter_dir: Path
    n_items: int  # training examples
    steps: int  # optimizer steps of the whole run
    resumed_from_step: int  # 0 = started fresh; == steps when the run had already finished
    final_loss: float  # mean completion-token loss of the last step
    tokens_per_s: float  # mean over the steps run in this call (prompt + completion tokens, all ranks)
    peak_memory_mb: float  # CUDA: max allocated; CPU: peak resident set size (the largest rank's)
    loss_history: list[float]  # one mean loss per optimizer step, from step 1
    config_hash: str = ""
    # The trained PeftModel, in memory (None when the run had already finished or ran on several
    # processes). Not saved.
    model: object = field(default=None, repr=False, compare=False)


def config_hash(model: ModelSpec, cfg: FinetuneSpec, examples, seed: int, parallel: dict | None = None) -> str:
    """Everything that decides the adapter: base model, settings, seed, the examples, and for a
    distributed run its world size and mixed precision (None for one process: unchanged hashes)."""
    h = hashlib.sha256()
    base = {"source": model.source, "revision": model.revision, "dtype": model.dtype}
    if model.source == tiny.BUILTIN_ID:  # a rebuilt tiny model is another base model
        base["recipe"] = tiny.recipe_hash()
    identity = {"model": base, "finetune": cfg.to_dict(), "seed": seed}
    if parallel is not None:
        identity["parallel"] = parallel
    h.update(json.dumps(identity, sort_keys=True).encode())
    for prompt, completion in examples:
        h.update(json.dumps([prompt, completion]).encode())
    return h.hexdigest()[:16]


def finished_result(out_dir: Path, config_hash: str) -> TrainResult | None:
    path = out_dir / "adapter" / FINETUNE_JSON
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("config_hash") != config_hash:
        raise ModelError(
            f"{str(out_dir)!r} holds a finished fine-tuning run with other settings, model, data or seed; "
            "delete it or use another output directory"
        )
    result = dict(record["result"])
    result["adapter_dir"] = out_dir / "adapter"
    result["resumed_from_step"] = result["steps"]
    return TrainResult(**result)


def result_record(result: TrainResult) -> dict:
    record = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "model"}
    record["adapter_dir"] = str(result.adapter_dir)
    return record


def result_from_record(record: dict) -> TrainResult:
    return TrainResult(**{**record, "adapter_dir": Path(record["adapter_dir"])})


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def versions() -> dict[str, str]:
    """relxfer's version and the installed versions of the training stack (as every run records them)."""
    return {"relxfer": relxfer.__version__, **package_versions(TRAINING_PACKAGES)}
