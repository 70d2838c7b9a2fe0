"""(Q)LoRA fine-tuning: a base model (4-bit NF4 for QLoRA) plus a peft LoRA adapter, trained on
(prompt, completion) pairs with the loss on the completion tokens only, in one process or with
FSDP2 across the processes a launcher started (the same loop: relxfer.train.loop).

    data.py         tokenization and the seeded order of micro-batches (no torch)
    loss.py         the completion-only loss: the mean over a step's completion tokens
    parallel.py     one process (`Single`) or FSDP2 (`Fsdp`): the only things that differ
    loop.py         `train_lora`, the training loop
    checkpoints.py  resumable checkpoints (torch.distributed.checkpoint), written in one place
    records.py      TrainResult, the run's config hash and provenance record
    worker.py       the entry point each distributed rank runs (`python -m relxfer.train.worker`)
    relay.py        rank 0's step reports, as JSON lines, to the process that tracks the run

The fine-tuning engines, behind `base.Trainer`: local_trainer.py (this process), launch.py with
torchrun_trainer.py and ray_trainer.py (FSDP2 ranks started by torchrun or Ray Train), and
tinker_trainer.py with tinker_recipe.py and tinker_export.py (the hosted Tinker service).

The names below are imported on first use: the Tinker trainer's service side (tinker_trainer,
tinker_recipe, tinker_export, data) imports this package and must not pull in torch, so that it
runs, and is contract-tested, where only the Tinker SDK is installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relxfer.train.checkpoints import KEEP_CHECKPOINTS
    from relxfer.train.data import micro_batches, tokenize_examples
    from relxfer.train.loop import SCHEDULERS, train_lora
    from relxfer.train.loss import completion_loss
    from relxfer.train.records import FINETUNE_JSON, TrainResult

_HOMES = {
    "KEEP_CHECKPOINTS": "relxfer.train.checkpoints",
    "completion_loss": "relxfer.train.loss",
    "micro_batches": "relxfer.train.data",
    "tokenize_examples": "relxfer.train.data",
    "SCHEDULERS": "relxfer.train.loop",
    "train_lora": "relxfer.train.loop",
    "FINETUNE_JSON": "relxfer.train.records",
    "TrainResult": "relxfer.train.records",
}

__all__ = [
    "FINETUNE_JSON",
    "KEEP_CHECKPOINTS",
    "SCHEDULERS",
    "TrainResult",
    "completion_loss",
    "micro_batches",
    "tokenize_examples",
    "train_lora",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
