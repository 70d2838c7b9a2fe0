"""One loss convention for every fine-tuning engine: a step's loss is the mean over all of its
completion tokens (each token weighs the same, however long its example). The local trainer and
the Tinker trainer must report the same step-1 loss on examples whose completions differ in
length; tinker-cookbook's SFT default (each example's weights sum to 1: the mean of per-example
means) would give another number on the same examples, which shows the check can tell them apart.

The Tinker side runs relxfer's real service loop (`train_on_service`) against a stand-in
training client (tests/tinker_contract/fake_sdk.py: every call checked against the installed
SDK's classes) whose `forward_backward` answers with the log-probabilities the tiny model gives
the targets, as the service's cross-entropy does on the untrained LoRA (B = 0: the base model).
The end-to-end version on a real server is in test_tinker_service.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relxfer.models.loading import load_causal_lm
from relxfer.models.tiny import BUILTIN_ID
from relxfer.models.tokenization import default_add_bos_token
from relxfer.spec.types import FinetuneSpec, ModelSpec
from relxfer.train import tokenize_examples, train_lora
from relxfer.train.tinker_trainer import train_on_service
from tests.tinker_contract.fake_sdk import SERVICE_CLIENT, TRAINING_CLIENT, Stand

pytestmark = pytest.mark.unit

TINY = ModelSpec.from_partial({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"})
EXAMPLES = [
    ("Question: which one?\nAnswer:", " A"),
    ("Q:", " the answer is B, because the passage says so plainly"),
    ("Question: and this?\nAnswer:", " C D"),
]
TOLERANCE = 1e-4


def one_step() -> FinetuneSpec:
    return FinetuneSpec.from_partial(
        {
            "method": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            "training": {"max_steps": 1, "batch_size": len(EXAMPLES), "warmup_ratio": 0.0, "learning_rate": 1e-3},
        }
    )


def stand_in_service(model):
    """A ServiceClient whose training client computes the target log-probabilities with `model`."""
    import tinker

    def forward_backward(data, loss_fn, loss_fn_config=None):
        assert loss_fn == "cross_entropy"
        outputs = []
        for datum in data:
            inputs = torch.tensor([datum.model_input.to_ints()])
            targets = torch.tensor(datum.loss_fn_inputs["target_tokens"].to_numpy()).long()
            with torch.inference_mode():
                logits = model(input_ids=inputs).logits[0].float()
            values = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].numpy()
            outputs.append({"logprobs": tinker.types.TensorData.from_numpy(values.astype(np.float32))})
        return tinker.types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={}
        )

    log: list = []
    training = Stand(
        TRAINING_CLIENT,
        {
            "forward_backward": forward_backward,
            "optim_step": lambda **a: tinker.types.OptimStepResponse(metrics={}),
            "save_weights_for_sampler": lambda name, **a: tinker.types.SaveWeightsForSamplerResponse(
                path=f"tinker://r/{name}"
            ),
        },
        log,
    )
    return Stand(SERVICE_CLIENT, {"create_lora_training_client": lambda **a: training}, log), log


def test_local_and_tinker_trainers_report_the_same_step_loss_on_examples_of_different_lengths(relxfer_cache, tmp_path):
    local: list[dict] = []
    train_lora(
        TINY,
        one_step(),
        EXAMPLES,
        tmp_path / "local",
        seed=0,
        cache_dir=relxfer_cache,
        on_step=lambda step, metrics: local.append(metrics),
        progress=False,
    )
    model, tokenizer = load_causal_lm(TINY, None, relxfer_cache)
    rows = tokenize_examples(tokenizer, EXAMPLES, default_add_bos_token(), 512)
    completion_lengths = sorted(n for _, n in rows)
    assert completion_lengths[0] < completion_lengths[-1] / 4, completion_lengths

    client, log = stand_in_service(model)
    run = train_on_service(
        client,
        rows,
        base_model="tiny",
        finetune=one_step(),
        seed=0,
        out_dir=tmp_path / "tinker",
        config_hash="loss",
        timeout=60.0,
        on_step=lambda *a: None,
    )
    print(f"step-1 loss: local {local[0]['train_loss']:.6f}, tinker {run.loss_history[0]:.6f}")
    assert run.loss_history[0] == pytest.approx(local[0]["train_loss"], abs=TOLERANCE)

    # tinker-cookbook 0.6.1's SFT default on the same tokens: the mean of per-example means.
    (backward,) = [c for c in log if c.method == "forward_backward"]
    per_example = []
    assert len(backward.arguments["data"]) == len(rows)
    for datum in backward.arguments["data"]:  # the step's examples, in the step's order
        weights = datum.loss_fn_inputs["weights"].to_numpy()
        n = np.count_nonzero(weights)
        inputs = torch.tensor([datum.model_input.to_ints()])
        targets = torch.tensor(datum.loss_fn_inputs["target_tokens"].to_numpy()).long()
        with torch.inference_mode():
            logits = model(input_ids=inputs).logits[0].float()
        token_loss = -torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].numpy()
        per_example.append(float(token_loss[-n:].mean()))
    cookbook = float(np.mean(per_example))
    print(f"tinker-cookbook's per-example mean on the same tokens: {cookbook:.6f}")
    assert abs(cookbook - run.loss_history[0]) > 10 * TOLERANCE, (cookbook, run.loss_history[0])
