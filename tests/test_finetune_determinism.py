"""A fine-tune depends on its seed, not on the process: the one that builds the built-in model
into a fresh cache and the one that loads it from the cache train identically (this is what lets
a killed study resume and still reproduce an uninterrupted one)."""

from __future__ import annotations

import pytest

from relxfer.models.tiny import BUILTIN_ID
from relxfer.spec.types import FinetuneSpec, ModelSpec
from relxfer.train import train_lora

pytestmark = pytest.mark.unit

TINY = ModelSpec.from_partial({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"})
EXAMPLES = [(f"Item: {w}\nAnswer:", f" {n}") for w, n in [("mabo", 1), ("lupi", 2), ("teka", 3), ("rako", 4)]] * 6


def test_building_the_base_model_does_not_change_training(tmp_path):
    cache = tmp_path / "fresh-cache"  # the first call builds the tiny model here, the second loads it
    cfg = FinetuneSpec.from_partial(
        {
            "method": "qlora",
            "quantization": {"compute_dtype": "float32"},
            "lora": {"r": 4, "dropout": 0.1},
            "training": {"max_steps": 5, "learning_rate": 1e-2, "batch_size": 8},
        }
    )
    built = train_lora(TINY, cfg, EXAMPLES, tmp_path / "a", seed=3, cache_dir=cache, progress=False)
    loaded = train_lora(TINY, cfg, EXAMPLES, tmp_path / "b", seed=3, cache_dir=cache, progress=False)
    assert built.loss_history == loaded.loss_history
