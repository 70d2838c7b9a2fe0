"""Resumable checkpoints, written in one place for one process and for FSDP2 alike.

    checkpoints/step-<N>/
        state.json      step, data position, loss history, config hash, world size
        train_state/    torch.distributed.checkpoint of the adapter weights and the AdamW state,
                        one shard file per rank (reshardable: a run may resume at another world size)
        scheduler.pt    the learning-rate schedule
        rng/rank-<r>.pt each rank's Python, NumPy and torch RNG states (LoRA dropout)
        adapter/        the adapter at this step in peft format (gathered; for people and uploads)

A checkpoint is written into a temporary directory that rank 0 renames into place once every
rank has written its part, so it is complete or absent. Only the last KEEP_CHECKPOINTS are kept.
`save_checkpoint` is the single place that writes one: a hook that wants every checkpoint (an
upload, say) gets it from the `on_checkpoint` callback of `train_lora`, called on rank 0 after
the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from relxfer.errors import ModelError

KEEP_CHECKPOINTS = 2  # older checkpoints are deleted once a newer one is complete


def trainable_tensors(model) -> dict:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    out_dir: Path, step: int, data_position: int, model, optimizer, scheduler, loss_history, config_hash: str, parallel
) -> Path:
    """Write checkpoint `step` (every rank calls this); returns its final directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    final = out_dir / "checkpoints" / f"step-{step}"
    tmp = Path(parallel.broadcast(_make_tmp(final) if parallel.is_main else None))
    try:
        state = {"adapter": trainable_tensors(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        with _quiet(parallel):
            dcp.save(state, checkpoint_id=str(tmp / "train_state"), no_dist=parallel.world_size == 1)
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank-{parallel.rank}.pt")
        adapter = parallel.trainable_state(model)
        if parallel.is_main:
            model.save_pretrained(tmp / "adapter", state_dict=adapter)
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            # Data position: micro-batches consumed so far (step x grad_accum_steps). The order is
            # a function of the seed, so the next micro-batch follows from (seed, position).
            record = {
                "step": step,
                "data_position": data_position,
                "loss_history": loss_history,
                "config_hash": config_hash,
                "world_size": parallel.world_size,
            }
            (tmp / "state.json").write_text(json.dumps(record) + "\n")
        parallel.barrier()  # every rank's shard is on disk
    except BaseException:
        if parallel.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if parallel.is_main:
        _replace(tmp, final)
        for old in sorted(_checkpoints(out_dir))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old[1], ignore_errors=True)
        for partial in final.parent.glob(".step-*"):  # left by a process killed while writing
            shutil.rmtree(partial, ignore_errors=True)
    parallel.barrier()
    return final


@contextlib.contextmanager
def _quiet(parallel):
    """One process: torch.distributed.checkpoint warns that no process group exists; that is meant."""
    with warnings.catch_warnings():
        if parallel.world_size == 1:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = _checkpoints(out_dir)
    return max(found)[1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler, config_hash: str, parallel) -> tuple[int, list[float]]:
    """Restore adapter, optimizer, schedule and this rank's RNG; (step, loss history)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    state = json.loads((path / "state.json").read_text())
    if state["config_hash"] != config_hash:
        raise ModelError(
            f"checkpoint {str(path)!r} belongs to a different fine-tuning run (other model, data, seed or "
            "settings); delete it or use another output directory"
        )
    # The optimizer's state must exist before it is loaded into (torch initialises it with a
    # zero-learning-rate step); the adapter tensors are loaded in place, shard by shard.
    adapter = {name: p.detach() for name, p in trainable_tensors(model).items()}  # same storage
    train_state = {"adapter": adapter, "optimizer": get_optimizer_state_dict(model, optimizer)}
    with _quiet(parallel):
        dcp.load(train_state, checkpoint_id=str(path / "train_state"), no_dist=parallel.world_size == 1)
    set_optimizer_state_dict(model, optimizer, train_state["optimizer"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / "rng" / f"rank-{parallel.rank}.pt"
    if rng.is_file():  # absent when resuming at a larger world size: that rank keeps its seed
        set_rng_state(torch.load(rng, weights_only=True))
    return int(state["step"]), list(state["loss_history"])


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith("step-") and (path / "state.json").is_file():
            found.append((int(path.name.split("-", 1)[1]), path))
    return found


def _make_tmp(final: Path) -> str:
    final.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent)


def _replace(tmp: Path, final: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


class atomic_dir:
    """Context manager: yields a temporary directory next to `final`; on success replaces
    `final` with it by a rename, on failure removes it."""

    def __init__(self, final: Path):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.tmp = Path(_make_tmp(self.final))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            _replace(self.tmp, self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    # Plain lists and tensors only, so the file loads with torch.load(weights_only=True).
    legacy = np.random.get_state()  # a tuple: the global legacy generator is always MT19937
    if not isinstance(legacy, tuple):
        raise TypeError(f"numpy's global generator state is a {type(legacy).__name__}, not MT19937's tuple")
    kind, keys, pos, has_gauss, gauss = legacy
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
