"""What the distributed fine-tuning tests share: the toy data, the recipe, an engine context, and
predictions of an adapter on the toy prompts."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from relxfer.data.synthetic import _syllables
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.models.tiny import BUILTIN_ID
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import (
    FinetuneSpec,
    FsdpFinetuneEngine,
    ModelSpec,
    Quantization,
    RayFinetuneEngine,
    TorchrunFinetuneEngine,
)
from relxfer.train.base import TrainRequest

TINY_ENTRY = {"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"}
TINY = ModelSpec.from_partial(TINY_ENTRY)
NF4 = Quantization.from_partial(
    {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
)
# Loss curves of one process and of FSDP2 over 2 gloo ranks agree to float32 summation order:
# the ranks sum their halves of each micro-batch and FSDP2 reduces gradients across them.
# Measured: 5.5e-7 over 6 steps of QLoRA; the bound leaves 20x room.
LOSS_TOLERANCE = 1e-5


def toy() -> list[tuple[str, str]]:
    """A learnable toy (the answer label is a fixed function of the word in the prompt) of 25
    rows: with micro-batches of 8 every epoch ends on a 1-row micro-batch, which leaves one of two
    ranks without a row (it then runs a zero-weight row so that it joins every collective)."""
    rng = random.Random(0)
    syllables = _syllables("shared")
    words = [rng.choice(syllables) + rng.choice(syllables) for _ in range(8)]
    return ([(f"Item: {w}\nAnswer:", f" {i % 4 + 1}") for i, w in enumerate(words)] * 4)[:25]


def recipe(method: str) -> FinetuneSpec:
    """6 steps of 2 micro-batches of 8, a checkpoint every 2 steps. Dropout 0: each rank draws
    its own dropout masks, so only without dropout are the curves of one and of two processes the
    same function of the data."""
    return FinetuneSpec.from_partial(
        {
            "method": method,
            "quantization": NF4.to_dict(),
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "training": {
                "max_steps": 6,
                "learning_rate": 1e-2,
                "batch_size": 8,
                "grad_accum_steps": 2,
                "warmup_ratio": 0.0,
                "checkpoint_every": 2,
            },
        }
    )


def engine(kind: str, **settings) -> FsdpFinetuneEngine:
    engine_class = {"torchrun": TorchrunFinetuneEngine, "ray": RayFinetuneEngine}[kind]
    return engine_class.from_partial({"kind": kind, **settings})


def context(config: FsdpFinetuneEngine, finetune: FinetuneSpec, cache: Path) -> EngineContext:
    model = ModelSpec.from_partial(
        {**TINY_ENTRY, "architecture": "dense", "engines": {"finetune": config.to_dict()}, "resources": {"gpus": 0}}
    )
    return EngineContext(model, SimpleNamespace(finetune=finetune), cache)


def request(finetune: FinetuneSpec, examples, out: Path, cache: Path, on_checkpoint=None) -> TrainRequest:
    return TrainRequest(
        TINY, finetune, examples, out, seed=3, cache_dir=cache, progress=False, on_checkpoint=on_checkpoint
    )


def predictions(adapter_dir: Path, quantization: Quantization | None, examples, cache: Path) -> np.ndarray:
    """Predicted label (0..3) per example: base + adapter loaded from disk, as evaluation does."""
    backend = LocalBackend.load(TINY, quantization, cache, adapter_dir=adapter_dir)
    prompts, conts = [], []
    for prompt, _ in examples:
        pairs = [backend.split_continuation(prompt, f" {k}") for k in "1234"]
        prompts.append(pairs[0][0])
        conts.append([c for _, c in pairs])
    return backend.label_logprobs(prompts, conts).argmax(1)
