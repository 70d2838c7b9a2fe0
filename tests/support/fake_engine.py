"""Scripted engines behind the real protocols, for tests and benchmarks that need studies run in
seconds: no model, no server, nothing but the runner's own code between a spec and its runs.

- `ScriptedBackend` (relxfer.evaluate.base.Backend): answers every prompt from a script, a
  function of the prompt's text; `ScriptedEngine` serves one such backend.
- `PlantedEngine` and `PlantedTrainer` (relxfer.evaluate.base.EvaluationEngine,
  relxfer.train.base.Trainer), built by the engine registry from a spec like any engine: the
  trainer writes an adapter that says how well it answers; evaluation answers each held-out item
  correctly with a probability that depends on its language's role and on that adapter, read
  from the copy the runner downloaded from the tracking store. Related languages gain, controls
  do not: a planted transfer that `compare` must find.
- `planted_engines()` puts both behind the `local` kind for the duration of a `with` block
  (relxfer.spec.engines.register), so a spec that runs on the local engines runs on these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from relxfer.evaluate.base import Adapter
from relxfer.spec import engines
from relxfer.spec.engines import EngineContext
from relxfer.train.base import StepCallback, TrainRequest

Script = Callable[[str], np.ndarray]  # prompt text -> one log-probability per label
Reasoning = Callable[[str], str]  # prompt text -> the chain of thought "generated" after it


class ScriptedBackend:
    """A Backend whose token ids are indices of the texts it was given, so that scoring and
    generation can look the text up again and answer from the script."""

    name = "scripted"

    def __init__(self, script: Script, reasoning: Reasoning | None = None):
        self.script, self.reasoning = script, reasoning
        self._texts: list[str] = []

    def text(self, ids: Sequence[int]) -> str:
        return self._texts[ids[0]]

    def encode(self, text: str) -> list[int]:
        self._texts.append(text)
        return [len(self._texts) - 1]

    def split_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return self.encode(context), [len(continuation)]

    def chat(self, text: str) -> str:
        return text

    def label_logprobs(self, prompts, continuations, batch_size=None, progress=False) -> np.ndarray:
        return np.stack([self.script(self.text(p)) for p in prompts])

    def generate(self, prompts, max_new_tokens, stop=(), batch_size=None, progress=False) -> list[str]:
        if self.reasoning is None:
            raise AssertionError("this scripted backend has no chain of thought to generate")
        return [self.reasoning(self.text(p)) for p in prompts]


class ScriptedEngine:
    """An EvaluationEngine serving one scripted backend, with or without an adapter."""

    kind = "scripted"

    def __init__(self, backend: ScriptedBackend):
        self._backend = backend

    def check(self) -> None:
        pass

    def backend(self, adapter: Adapter | None) -> ScriptedBackend:
        return self._backend

    def run_tags(self) -> dict[str, str]:
        return {"engine": self.kind}

    def log_files(self) -> dict[str, Path]:
        return {}

    def close(self) -> None:
        pass


# --- a planted transfer ------------------------------------------------------------------------

PLANTED_ADAPTER = "planted.json"
BASE_ACCURACY = 0.3  # the base model on every language, also after reasoning (CoT)
TRAINED_ACCURACY = 0.9  # with the adapter, on the training language's relatives only
REASONING = "The passage answers it."  # the chain of thought the planted backend "generates"


def _uniform(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`: the same item scores the same in every run."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def planted_logprobs(gold: int, n_labels: int, accuracy: float, *key: object) -> np.ndarray:
    """Log-probabilities whose argmax is `gold` with probability `accuracy` over items (decided
    by `key`), another label otherwise."""
    predicted = gold
    if _uniform("correct", *key) >= accuracy:
        predicted = (gold + 1 + int(_uniform("wrong", *key) * (n_labels - 1))) % n_labels
    logprobs = np.log(np.full(n_labels, 0.5 / (n_labels - 1)))
    logprobs[predicted] = np.log(0.5 + 1e-3)
    return logprobs


class PlantedEngine:
    """Evaluation on the study's own items with planted accuracies (see the module's docstring)."""

    kind = "planted"

    def __init__(self, config: dict, context: EngineContext):
        self.context = context
        self._items = None  # (passage, question) -> item, built on the first backend

    def check(self) -> None:
        pass

    def _find(self, text: str):
        if self._items is None:
            from relxfer.plan.study_data import load_study_data

            data = load_study_data(self.context.spec)
            self._items = [item for items in data.eval_items.values() for item in items]
        found = [item for item in self._items if item.passage in text and item.question in text]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} held-out items match the prompt {text[:200]!r}")
        return found[0]

    def backend(self, adapter: Adapter | None) -> ScriptedBackend:
        related = {lang for g in self.context.spec.groups if g.role == "related" for lang in g.languages}
        trained = json.loads((adapter.path / PLANTED_ADAPTER).read_text())["accuracy"] if adapter else None
        labels = self.context.spec.prompt.labels

        def accuracy(language: str) -> float:
            return trained if trained is not None and language in related else BASE_ACCURACY

        def script(text: str) -> np.ndarray:
            item = self._find(text)
            # After reasoning the answers are drawn afresh (same accuracy): CoT gains are noise.
            key = (item.question_id, item.language, adapter.key if adapter else "", REASONING in text)
            return planted_logprobs(item.gold, len(labels), accuracy(item.language), *key)

        def reasoning(text: str) -> str:
            return f"{REASONING} The answer is {labels[int(np.argmax(script(text + REASONING)))]}."

        return ScriptedBackend(script, reasoning)

    def run_tags(self) -> dict[str, str]:
        return {"engine": self.kind}

    def log_files(self) -> dict[str, Path]:
        return {}

    def close(self) -> None:
        self._items = None


class PlantedTrainer:
    """A Trainer that reports a falling loss for a few steps and writes an adapter holding the
    accuracy it plants."""

    kind = "planted"
    STEPS = 3

    def __init__(self, config: dict, context: EngineContext):
        self.context = context

    def check(self) -> None:
        pass

    def train(self, request: TrainRequest, on_step: StepCallback):
        from relxfer.train.records import TrainResult

        losses = [1.0 / step for step in range(1, self.STEPS + 1)]
        for step, loss in enumerate(losses, start=1):
            on_step(step, {"train_loss": loss, "learning_rate": 0.001})
        adapter_dir = request.out_dir / "adapter"
        adapter_dir.mkdir(parents=True, exist_ok=True)
        record = {"accuracy": TRAINED_ACCURACY, "seed": request.seed, "n_examples": len(request.examples)}
        (adapter_dir / PLANTED_ADAPTER).write_text(json.dumps(record))
        return TrainResult(
            adapter_dir=adapter_dir,
            n_items=len(request.examples),
            steps=self.STEPS,
            resumed_from_step=0,
            final_loss=losses[-1],
            tokens_per_s=0.0,
            peak_memory_mb=0.0,
            loss_history=losses,
        )

    def run_tags(self) -> dict[str, str]:
        return {"engine": self.kind}


@contextmanager
def planted_engines(kind: str = "local") -> Iterator[None]:
    """Within the block, models whose engines are `kind` evaluate on PlantedEngine and fine-tune
    on PlantedTrainer; the registry's own entries come back afterwards."""
    # The kind's own key settings stay: cells keep the keys they have on the real engines.
    evaluate = engines.EVALUATION_ENGINES[kind]
    finetune = engines.FINETUNE_ENGINES[kind]
    engines.register("evaluate", kind, replace(evaluate, path=f"{__name__}:PlantedEngine"))
    engines.register("finetune", kind, replace(finetune, path=f"{__name__}:PlantedTrainer"))
    try:
        yield
    finally:
        engines.register("evaluate", kind, evaluate)
        engines.register("finetune", kind, finetune)
