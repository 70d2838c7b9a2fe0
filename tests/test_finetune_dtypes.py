"""Fine-tuning on the CPU in bfloat16 as well as float32: QLoRA with a bfloat16 compute dtype and
plain LoRA on a bfloat16 base both train (finite, falling loss) and save a loadable adapter."""

from __future__ import annotations

import math

import pytest

from relxfer.evaluate.local_backend import LocalBackend
from relxfer.models.tiny import BUILTIN_ID
from relxfer.spec.types import FinetuneMethod, FinetuneSpec, ModelSpec
from relxfer.train import train_lora

pytestmark = pytest.mark.unit

EXAMPLES = [
    (f"Item: {w}\nAnswer:", f" {n}")
    for w, n in [("mabo", 1), ("lupi", 2), ("teka", 3), ("rako", 4), ("sinu", 1), ("gedo", 2), ("pali", 3), ("kemu", 4)]
] * 4


@pytest.mark.parametrize(
    "model, finetune",
    [
        (
            {"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"},
            {"method": "qlora", "quantization": {"compute_dtype": "bfloat16"}},
        ),
        ({"name": "tiny", "source": BUILTIN_ID, "dtype": "bfloat16"}, {"method": "lora"}),
    ],
    ids=["qlora-bf16-compute", "lora-bf16-base"],
)
def test_bfloat16_training_on_cpu(model, finetune, relxfer_cache, tmp_path):
    model = ModelSpec.from_partial(model)
    cfg = FinetuneSpec.from_partial(
        {
            **finetune,
            "lora": {"r": 8, "dropout": 0.0},
            "training": {"max_steps": 12, "learning_rate": 1e-2, "batch_size": 8, "warmup_ratio": 0.0},
        }
    )
    result = train_lora(model, cfg, EXAMPLES, tmp_path / "ft", seed=0, cache_dir=relxfer_cache, progress=False)
    assert all(math.isfinite(loss) for loss in result.loss_history)
    assert sum(result.loss_history[-3:]) / 3 < result.loss_history[0] - 1.0
    quantization = cfg.quantization if cfg.method is FinetuneMethod.QLORA else None
    backend = LocalBackend.load(model, quantization, relxfer_cache, adapter_dir=result.adapter_dir)
    prompt, cont = backend.split_continuation(EXAMPLES[0][0], " 1")
    assert math.isfinite(float(backend.label_logprobs([prompt], [[cont]])[0, 0]))
