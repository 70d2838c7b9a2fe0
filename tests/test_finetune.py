"""QLoRA fine-tuning of the built-in tiny model with real bitsandbytes 4-bit layers: the loss
falls on a learnable toy, the saved adapter reproduces the trained model, a finished run is not
redone (a killed run's resume: test_finetune_killed.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from relxfer.data.synthetic import _syllables
from relxfer.errors import ModelError
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.models.loading import load_causal_lm
from relxfer.models.tiny import BUILTIN_ID
from relxfer.spec.types import FinetuneSpec, ModelSpec, Quantization
from relxfer.train import (
    completion_loss,
    tokenize_examples,
    train_lora,
)

pytestmark = pytest.mark.unit

# One intra-op thread: fast for the tiny model, robust on a shared 2-core machine, and the same
# as in test_finetune_killed.py's killed process (results are compared bit for bit).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = ModelSpec.from_partial({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"})
NF4 = Quantization.from_partial(
    {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
)


def qlora(**training) -> FinetuneSpec:
    return FinetuneSpec.from_partial(
        {
            "method": "qlora",
            "quantization": NF4.to_dict(),
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
            "training": {"learning_rate": 1e-2, "batch_size": 8, "warmup_ratio": 0.0, **training},
        }
    )


@pytest.fixture(scope="module")
def toy() -> list[tuple[str, str]]:
    """A learnable toy: the answer label is a fixed function of the word in the prompt."""
    rng = random.Random(0)
    syllables = _syllables("shared")
    words = [rng.choice(syllables) + rng.choice(syllables) for _ in range(8)]
    return [(f"Item: {w}\nAnswer:", f" {i % 4 + 1}") for i, w in enumerate(words)] * 4


@pytest.fixture(scope="module")
def trained(toy, relxfer_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    calls = []
    result = train_lora(
        TINY,
        qlora(max_steps=30),
        toy,
        out,
        seed=0,
        cache_dir=relxfer_cache,
        on_step=lambda s, m: calls.append((s, m)),
        progress=False,
    )
    return result, calls, out


def label_scores(backend: LocalBackend, examples) -> np.ndarray:
    prompts, conts = [], []
    for prompt, _ in examples:
        pairs = [backend.split_continuation(prompt, f" {k}") for k in "1234"]
        prompts.append(pairs[0][0])
        conts.append([c for _, c in pairs])
    return backend.label_logprobs(prompts, conts)


def test_loss_falls_and_the_toy_is_learned(trained, toy):
    result, calls, _ = trained
    assert result.steps == 30 and result.resumed_from_step == 0 and result.n_items == len(toy)
    assert len(result.loss_history) == 30 and result.final_loss == result.loss_history[-1]
    # From ~ln(vocabulary) to well below ln(4) = 1.39: the mapping is learned, not just the labels.
    assert result.loss_history[0] > 5 and np.mean(result.loss_history[-3:]) < 0.5
    assert [s for s, _ in calls] == list(range(1, 31))
    assert set(calls[0][1]) == {"train_loss", "learning_rate", "tokens_per_s"}
    assert calls[0][1]["learning_rate"] == pytest.approx(1e-2) and calls[-1][1]["learning_rate"] < 1e-3  # linear decay
    assert result.tokens_per_s > 0 and result.peak_memory_mb > 0
    backend = LocalBackend(result.model, AutoTokenizer.from_pretrained(result.adapter_dir))
    gold = np.array([int(c) - 1 for _, c in toy])
    assert (label_scores(backend, toy).argmax(1) == gold).all()


def test_saved_adapter_reproduces_the_trained_model(trained, toy, relxfer_cache):
    result, _, out = trained
    adapter = Path(result.adapter_dir)
    assert adapter == out / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "relxfer_finetune.json"} <= names
    record = json.loads((adapter / "relxfer_finetune.json").read_text())
    assert record["base_model"] == {"name": "tiny", "source": BUILTIN_ID, "revision": None, "dtype": "float32"}
    assert (
        record["finetune"]["lora"]["target_modules"] == "all-linear"
        and record["finetune"]["training"]["max_steps"] == 30
    )
    assert record["seed"] == 0 and record["result"]["steps"] == 30 and "bitsandbytes" in record["versions"]
    assert not (out / "checkpoints").exists()

    reloaded = LocalBackend.load(TINY, NF4, relxfer_cache, adapter_dir=adapter)
    ids = torch.tensor([reloaded.encode(toy[0][0] + toy[0][1])], device=reloaded.device)
    with torch.inference_mode():
        in_memory = result.model(input_ids=ids).logits
        from_disk = reloaded.model(input_ids=ids).logits
    # Same NF4 weights, same adapter tensors, same kernels: equal to float32 rounding.
    torch.testing.assert_close(from_disk, in_memory, atol=1e-5, rtol=0)
    base = LocalBackend.load(TINY, NF4, relxfer_cache)
    with torch.inference_mode():
        assert (base.model(input_ids=ids).logits - in_memory).abs().max() > 0.1  # the adapter matters


def test_rerun_returns_the_finished_result_and_a_changed_config_is_refused(trained, toy, relxfer_cache):
    result, _, out = trained
    again = train_lora(TINY, qlora(max_steps=30), toy, out, seed=0, cache_dir=relxfer_cache, progress=False)
    assert again.resumed_from_step == again.steps == 30 and again.loss_history == result.loss_history
    assert again.model is None
    with pytest.raises(ModelError, match="holds a finished fine-tuning run with other settings"):
        train_lora(TINY, qlora(max_steps=31), toy, out, seed=0, cache_dir=relxfer_cache, progress=False)


def test_gradient_accumulation_equals_one_big_batch(toy, relxfer_cache, tmp_path):
    lora = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
    runs = {}
    for batch, accum in ((8, 1), (4, 2)):
        cfg = FinetuneSpec.from_partial(
            {
                **lora,
                "training": {
                    "learning_rate": 1e-2,
                    "max_steps": 3,
                    "batch_size": batch,
                    "grad_accum_steps": accum,
                    "lr_scheduler": "constant",
                },
            }
        )
        runs[accum] = train_lora(
            TINY, cfg, toy, tmp_path / f"accum{accum}", seed=2, cache_dir=relxfer_cache, progress=False
        )
    np.testing.assert_allclose(runs[1].loss_history, runs[2].loss_history, atol=1e-5, rtol=0)
    a = load_file(tmp_path / "accum1" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "accum2" / "adapter" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_completion_tokens_only_and_padding_does_not_change_the_loss(relxfer_cache):
    model, tokenizer = load_causal_lm(TINY, None, relxfer_cache)
    backend = LocalBackend(model, tokenizer, add_bos_token=False)
    examples = [
        ("Item: mabo\nAnswer:", " 3"),
        ("Passage: a much longer prompt here.\nAnswer: ", "teka lupi"),
        ("Q:", " 1 2"),
    ]
    rows = tokenize_examples(tokenizer, examples, add_bos_token=False, max_seq_len=512)
    for (prompt, completion), (ids, n) in zip(examples, rows):
        context_ids, completion_ids = backend.split_continuation(prompt, completion)
        assert ids == context_ids + completion_ids and n == len(completion_ids)
    assert tokenize_examples(tokenizer, examples[1:2], False, max_seq_len=4)[0] == (rows[1][0][-4:], 3)
    with torch.inference_mode():
        batched, n_batched = completion_loss(model, rows, tokenizer.pad_token_id, model.device)
        singles = [completion_loss(model, [row], tokenizer.pad_token_id, model.device) for row in rows]
    assert n_batched == sum(n for _, n in singles) == sum(n for _, n in rows)
    assert batched.item() == pytest.approx(sum(loss.item() for loss, _ in singles), abs=1e-4)
    # The summed loss is minus the log-likelihood that scoring computes for the same split.
    scored = backend.label_logprobs_bruteforce(
        [backend.split_continuation(*examples[0])[0]], [[backend.split_continuation(*examples[0])[1]]]
    )
    assert singles[0][0].item() == pytest.approx(-scored[0, 0], abs=1e-4)


def test_epochs_set_the_number_of_steps_and_bad_settings_are_refused(toy, relxfer_cache, tmp_path):
    cfg = FinetuneSpec.from_partial(
        {
            "method": "lora",
            "lora": {"dropout": 0.0},
            "training": {"epochs": 1.5, "batch_size": 8, "warmup_ratio": 0.5, "lr_scheduler": "cosine"},
        }
    )
    rates = []
    result = train_lora(
        TINY,
        cfg,
        toy,
        tmp_path / "epochs",
        seed=0,
        cache_dir=relxfer_cache,
        on_step=lambda s, m: rates.append(m["learning_rate"]),
        progress=False,
    )
    assert result.steps == 6  # 32 examples / 8 per batch = 4 steps per epoch, x 1.5
    assert rates[0] == 0.0 and max(rates) == pytest.approx(2e-4)  # linear warmup over 3 steps, then cosine
    for bad, message in (
        ({"method": "full"}, "finetune: /method: 'full' is not allowed here; one of: qlora, lora"),
        ({"training": {"lr_scheduler": "step"}}, "finetune: /training/lr_scheduler: 'step' is not allowed here"),
        ({"training": {"batch_size": 0}}, "finetune: /training/batch_size: 0 is less than the minimum of 1"),
        ({"training": {"max_steps": 0}}, "finetune: /training/max_steps: 0 is less than the minimum of 1"),
        ({"training": {"epochs": 0}}, "finetune: /training/epochs: 0 is less than or equal to the minimum of 0"),
    ):
        with pytest.raises(ModelError, match=message):
            train_lora(
                TINY, FinetuneSpec.from_partial(bad, ModelError), toy, tmp_path / "bad", seed=0, cache_dir=relxfer_cache
            )
