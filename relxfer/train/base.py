"""The interface of fine-tuning engines. Every engine trains the same examples in the same order
with the same completion-only loss and returns the same `TrainResult`, with the adapter in peft
format in `result.adapter_dir`; the runner logs steps and the adapter to MLflow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from relxfer.spec.types import FinetuneSpec, ModelSpec

if TYPE_CHECKING:
    from relxfer.train import TrainResult

# (optimizer step, {"train_loss": ..., "learning_rate": ..., ...}): numbers become the step's metrics,
# text values run tags (e.g. the path of service-side state a re-run resumes from).
StepCallback = Callable[[int, dict], None]


@dataclass
class TrainRequest:
    model: ModelSpec
    finetune: FinetuneSpec
    examples: list[tuple[str, str]]  # (prompt, completion) pairs, in the spec's order
    out_dir: Path  # the cell's working directory: checkpoints, then `adapter/`
    seed: int
    cache_dir: Path
    progress: bool = True
    # Called (step, checkpoint directory) after every complete checkpoint, in this process: the
    # one place to hook an upload of checkpoints (e.g. to MLflow artifacts through the tracker).
    on_checkpoint: Callable[[int, Path], None] | None = None


class Trainer(Protocol):
    """Built by `relxfer.spec.engines.trainer(context)` from the model's `engines.finetune` entry."""

    kind: str

    def check(self) -> None:
        """Fail (RelxferError, one line) before any run exists when the engine cannot work."""

    def train(self, request: TrainRequest, on_step: StepCallback) -> TrainResult:
        """Train (resuming from the last checkpoint in `request.out_dir`), calling `on_step`
        after every optimizer step, possibly again for steps repeated after a resume."""

    def run_tags(self) -> dict[str, str]:
        """What can change the fine-tune's result (engine kind, world size), as tags."""
