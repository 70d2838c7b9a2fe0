"""The `local` fine-tuning engine: `relxfer.train.train_lora` in this process."""

from __future__ import annotations

from relxfer.spec.engines import EngineContext
from relxfer.spec.types import LocalFinetuneEngine
from relxfer.train.base import StepCallback, TrainRequest


class LocalTrainer:
    kind = "local"

    def __init__(self, config: LocalFinetuneEngine, context: EngineContext):
        self.context = context

    def train(self, request: TrainRequest, on_step: StepCallback):
        from relxfer.train import train_lora

        return train_lora(
            request.model,
            request.finetune,
            request.examples,
            out_dir=request.out_dir,
            seed=request.seed,
            cache_dir=request.cache_dir,
            on_step=on_step,
            progress=request.progress,
            on_checkpoint=request.on_checkpoint,
        )

    def check(self) -> None:
        pass  # the model source is checked by the runner's preflight for every engine

    def run_tags(self) -> dict[str, str]:
        from relxfer.spec.memory import finetune_tags

        return {"engine": self.kind, **finetune_tags(self.context.model, self.context.spec.finetune)}
