"""A fine-tuned adapter travels through MLflow: logits of the trained model in memory equal the
logits of base + adapter downloaded from the tracking server's artifact store."""

from __future__ import annotations

import pytest
import torch

from relxfer.data.prompts import PromptBuilder
from relxfer.data.synthetic import SyntheticLanguage, generate
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.models.tiny import BUILTIN_ID
from relxfer.spec.types import FinetuneSpec, ModelSpec, Quantization
from relxfer.tracking.client import Tracker
from relxfer.train import train_lora

pytestmark = pytest.mark.integration

TINY = ModelSpec.from_partial({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"})
NF4 = Quantization.from_partial(
    {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
)
TOLERANCE = 1e-5  # float32 logits; the same 4-bit base is re-quantized identically on load


def test_logits_after_reloading_the_adapter_from_mlflow_equal_the_trained_model(mlflow_server, relxfer_cache, tmp_path):
    items = generate([SyntheticLanguage("syn_Base")], n_passages=16)["syn_Base"]
    builder = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]})
    examples = [builder.training_example(item) for item in items]
    finetune = FinetuneSpec.from_partial(
        {
            "method": "qlora",
            "quantization": NF4.to_dict(),
            "lora": {"r": 4, "dropout": 0.0},
            "training": {"max_steps": 6, "learning_rate": 5e-3, "batch_size": 8},
        }
    )
    result = train_lora(TINY, finetune, examples, tmp_path / "ft", seed=0, cache_dir=relxfer_cache, progress=False)

    tracker = Tracker(mlflow_server.uri)
    run_id = tracker.client.create_run(tracker.experiment_id("adapter-roundtrip")).info.run_id
    tracker.log_artifacts(run_id, result.adapter_dir, "adapter")
    downloaded = tracker.download(run_id, "adapter", tmp_path / "downloaded")
    reloaded = LocalBackend.load(TINY, NF4, relxfer_cache, adapter_dir=downloaded)

    ids = torch.tensor([reloaded.encode(examples[0][0] + examples[0][1])])
    with torch.inference_mode():
        trained = result.model.eval()(input_ids=ids).logits
        again = reloaded.model(input_ids=ids).logits
    assert torch.allclose(trained, again, atol=TOLERANCE, rtol=0)
    base = LocalBackend.load(TINY, NF4, relxfer_cache)
    with torch.inference_mode():
        assert not torch.allclose(base.model(input_ids=ids).logits, again, atol=1e-3)  # the adapter matters
