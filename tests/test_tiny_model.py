"""The built-in tiny model and model loading: deterministic offline build, byte-level tokenizer,
label tokenization, and the errors of `load_causal_lm`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relxfer.errors import ModelError
from relxfer.models.loading import load_causal_lm
from relxfer.models.tiny import BUILTIN_ID, build_tiny_model, tiny_model_dir
from relxfer.spec.types import ModelSpec, Quantization
from tests.support import shared_data

pytestmark = pytest.mark.unit

# One intra-op thread: the tiny model gains nothing from more, and on a shared 2-core machine
# two OpenMP threads can run 50x slower when another process holds a core.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SIB200 = shared_data.SHARED_DATA / "sib200"


def file_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def tiny_dir(relxfer_cache) -> Path:
    return build_tiny_model(relxfer_cache)


def test_build_is_cached_and_leaves_no_temporary_directories(tmp_path):
    path = build_tiny_model(tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path) == path == tiny_model_dir(tmp_path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "builtin").iterdir()] == [path.name]


def test_loads_with_auto_classes(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Passage: mabo lupi teka.")])).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|user|>\nhi<|eos|>\n<|assistant|>\n"


def test_tokenizer_round_trips_any_script(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    texts = ["قرأ الطالب الكتاب في المكتبة.", "שלום, מה שלומך?", "ሰላም ለዓለም።", "Ça va? 日本語 🙂", "mabo lupi teka."]
    for code in ("arb_Arab", "heb_Hebr", "amh_Ethi"):
        path = SIB200 / code / "dev.tsv"
        if shared_data.available(path, "SIB-200 sentences"):
            texts += [line.split("\t")[2] for line in path.read_text(encoding="utf-8").splitlines()[1:4]]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_answer_labels_are_single_tokens(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for label in ["1", "2", "3", "4", " 1", " 2", " 3", " 4", "A", " A"]:
        assert len(tokenizer.encode(label, add_special_tokens=False)) == 1, label
    # " A" is one token, 'ĠA' (byte-level BPE's space marker + A).
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode(" A", add_special_tokens=False)) == ["ĠA"]
    # Synthetic words are several tokens: the multi-token scoring path gets exercised.
    assert len(tokenizer.encode(" mabo lupi", add_special_tokens=False)) > 1


def entry(partial: dict) -> ModelSpec:
    """A model entry as a direct library call builds it (a bad setting is a ModelError)."""
    return ModelSpec.from_partial(partial, ModelError)


def test_load_builtin_in_4bit_has_bitsandbytes_layers(relxfer_cache):
    import bitsandbytes as bnb

    model, tokenizer = load_causal_lm(
        entry({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"}),
        Quantization.from_partial({"load_in_4bit": True}),
        relxfer_cache,
    )
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14  # 7 projections x 2 layers; lm_head stays in full precision
    assert layers[0].weight.quant_state.quant_type == "nf4" and not model.training


def test_load_errors_name_the_problem(tmp_path, relxfer_cache, monkeypatch):
    with pytest.raises(ModelError, match="does not exist") as err:
        load_causal_lm(entry({"name": "x", "source": str(tmp_path / "nowhere")}), None, relxfer_cache)
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(ModelError, match="has no config.json"):
        load_causal_lm(entry({"name": "x", "source": str(tmp_path)}), None, relxfer_cache)
    with pytest.raises(ModelError, match="unknown built-in model 'builtin:nope'"):
        load_causal_lm(entry({"name": "x", "source": "builtin:nope"}), None, relxfer_cache)
    with pytest.raises(ModelError, match=r"model: /dtype: 'float8' is not allowed here; did you mean float32"):
        load_causal_lm(entry({"name": "x", "source": BUILTIN_ID, "dtype": "float8"}), None, relxfer_cache)
    # A hub id that is not cached: offline mode makes the failure immediate (no network retries).
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_causal_lm(
            entry({"name": "q", "source": "relxfer-test/not-cached-model", "revision": "main"}), None, relxfer_cache
        )
    message = str(err.value)
    assert "\n" not in message
    assert "'relxfer-test/not-cached-model'" in message and "must be downloaded and cached first" in message
    assert os.environ.get("HF_TOKEN") is None or os.environ["HF_TOKEN"] not in message
