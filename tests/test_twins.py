"""The built-in twins: tiny random-weight models in the flagship's real architectures on the real
tokenizers of ../shared/data/tokenizers. Each one is built (byte for byte the same on a second
build), QLoRA fine-tuned for a few steps on real English Belebele items (real bitsandbytes 4-bit
layers; what is 4-bit and what carries LoRA asserted per architecture) and evaluated baseline,
fine-tuned and CoT on real French items through the local backend, in the prompt format
specs/families.json declares for it (its family's chat template, a small reasoning budget)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main
from relxfer.data.belebele import load_belebele
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.evaluate.loop import encode_requests, evaluate_items
from relxfer.models import real_tokenizers, twins
from relxfer.models.chat_format import prompt_builder
from relxfer.models.loading import load_tokenizer
from relxfer.spec.load import load_spec
from relxfer.spec.types import FinetuneSpec
from relxfer.train.loop import train_lora
from tests.support import shared_data

pytestmark = pytest.mark.integration

TOKENIZERS = shared_data.SHARED_DATA / "tokenizers"
FAMILIES = Path(__file__).resolve().parents[1] / "specs" / "families.json"

# Per twin: the model class; what carries LoRA under `all-linear`: the linear modules by name, and
# the parameters peft 0.22 targets on transformers 5 (the fused experts and the router of
# Qwen3-MoE and DeepSeek-V3, which are not nn.Linear there; gpt-oss's experts and router get no
# LoRA at all); and under the format specs/families.json declares: the answer prompt's ending,
# the ids scored for label "1" and the training completion's end (the family's end token).
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}
MLA = {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}
EXPERTS = {"gate_up_proj", "down_proj", "gate.weight"}
QWEN3_ANSWER = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
EXPECTED = {
    "builtin:qwen3-twin": ("Qwen3ForCausalLM", ATTENTION | MLP, set(), QWEN3_ANSWER, [271, 16], "<|im_end|>"),
    "builtin:qwen3-moe-twin": ("Qwen3MoeForCausalLM", ATTENTION, EXPERTS, QWEN3_ANSWER, [271, 16], "<|im_end|>"),
    "builtin:gpt-oss-twin": (
        "GptOssForCausalLM",
        ATTENTION,
        set(),
        "<|start|>assistant<|channel|>final<|message|>",
        [16],
        "<|return|>",
    ),
    # MLP: the dense first layer and the shared expert
    "builtin:deepseek-v3-twin": (
        "DeepseekV3ForCausalLM",
        MLA | MLP,
        EXPERTS,
        "<｜Assistant｜></think>",
        [16],
        "<｜end▁of▁sentence｜>",
    ),
}


@pytest.fixture(scope="module")
def belebele(belebele_dir):
    data = load_belebele(["eng_Latn", "fra_Latn"], path=belebele_dir).items_by_language
    return data["eng_Latn"][:8], data["fra_Latn"][100:104]


@pytest.fixture(autouse=True)
def real_tokenizers_dir(monkeypatch):
    shared_data.need(TOKENIZERS / "qwen3" / "vocab.json", "the real tokenizer files")
    monkeypatch.delenv(real_tokenizers.TOKENIZERS_ENV, raising=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("builtin_id", list(EXPECTED))
def test_twin_fine_tunes_with_qlora_and_evaluates_real_belebele(builtin_id, belebele, relxfer_cache, tmp_path):
    import bitsandbytes as bnb

    model_class, lora_modules, lora_parameters, prompt_end, first_scored, completion_end = EXPECTED[builtin_id]
    item = twins.twin(builtin_id)
    built = twins.build_twin(relxfer_cache, builtin_id)
    again = twins.build_twin(tmp_path / "cache", builtin_id)
    assert again.name == built.name and _sha256(again / "model.safetensors") == _sha256(built / "model.safetensors")
    assert json.loads((built / "config.json").read_text())["architectures"] == [model_class]
    assert (built / "model.safetensors").stat().st_size < 60e6

    spec = load_spec(FAMILIES)
    [model] = [m for m in spec.models if m.source == builtin_id]
    assert model.architecture == item.architecture and model.dtype == "float32"
    finetune = FinetuneSpec.from_partial(
        {
            "method": "qlora",
            "quantization": {"compute_dtype": "float32"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.01, "max_seq_len": 1024},
        }
    )
    english, french = belebele
    tokenizer = load_tokenizer(model, relxfer_cache)
    builder = prompt_builder(spec, model, tokenizer)  # the model's declared format, as the runner binds it
    examples = [builder.training_example(x) for x in english]
    assert examples[0][0].endswith(prompt_end) and examples[0][1].endswith(completion_end)
    # The labels are single digits after the template's ending, as in the real tokenizers.
    assert tokenizer.encode("1", add_special_tokens=False) == [16]
    assert tokenizer.encode(" 1", add_special_tokens=False) == [220, 16]

    result = train_lora(
        model, finetune, examples, tmp_path / "finetune", seed=0, cache_dir=relxfer_cache, progress=False
    )
    assert result.steps == 2 and all(math.isfinite(x) for x in result.loss_history)
    trained = result.model.get_base_model()
    four_bit = {n for n, m in trained.named_modules() if isinstance(m, bnb.nn.Linear4bit) and ".layers.1." in n}
    assert any("self_attn.o_proj" in n for n in four_bit)  # attention is 4-bit in every twin
    fused = [p for n, p in trained.named_parameters() if ".experts." in n and p.dim() == 3]
    assert bool(fused) == (item.architecture == "moe")  # fused experts stay in the compute dtype
    lora = result.model.peft_config["default"]
    assert {name.rsplit(".", 1)[-1] for name in lora.target_modules} == lora_modules
    assert set(lora.target_parameters or ()) == lora_parameters
    assert any(".experts." in n and "lora_A" in n for n, _ in result.model.named_parameters()) == bool(lora_parameters)

    quantization = finetune.quantization
    baseline = LocalBackend.load(model, quantization, relxfer_cache)
    tuned = LocalBackend.load(model, quantization, relxfer_cache, adapter_dir=result.adapter_dir)
    _, continuations = encode_requests(baseline, [builder.direct(french[0])], builder.continuations())
    assert continuations[0][0] == first_scored
    base_run = evaluate_items(baseline, french, builder, progress=False)
    tuned_run = evaluate_items(tuned, french, builder, progress=False)
    cot_run = evaluate_items(baseline, french, builder, cot=spec.cot, progress=False)
    for run in (base_run, tuned_run, cot_run):
        assert run.metrics["n_items"] == 4 and 0 <= run.metrics["accuracy"] <= 1
        assert all(math.isfinite(r[f"logprob_{label}"]) for r in run.records for label in builder.labels)
    # The adapter, saved and loaded back, changes the scores.
    assert any(b["logprob_1"] != t["logprob_1"] for b, t in zip(base_run.records, tuned_run.records))
    # CoT within the declared budget, its reasoning split and counted: random weights never reach
    # gpt-oss's final channel, so each analysis message is cut by the budget and closed.
    assert all("cot_text" in r and "cot_truncated" in r for r in cot_run.records)
    assert 0 <= cot_run.metrics["truncated_rate"] <= 1
    if builtin_id == "builtin:gpt-oss-twin":
        assert cot_run.metrics["truncated_rate"] == 1.0 and all(r["cot_answer"] == "" for r in cot_run.records)


def test_a_twin_without_its_tokenizer_files_is_one_line_exit_2(tmp_path, monkeypatch):
    spec = json.loads((Path(__file__).resolve().parents[1] / "specs" / "smoke.json").read_text())
    spec["models"][0]["source"] = "builtin:gpt-oss-twin"
    spec["models"][0]["architecture"] = "moe"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv(real_tokenizers.TOKENIZERS_ENV, str(tmp_path / "nowhere"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(main, ["run", str(path), "--tracking-uri", uri, "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: the real gpt-oss tokenizer files are not at {tmp_path / 'nowhere' / 'gpt-oss'}: set "
        "RELXFER_TOKENIZERS_DIR to the directory holding qwen3/, qwen3-instruct-2507/, gpt-oss/, deepseek-v3.1/"
    )
