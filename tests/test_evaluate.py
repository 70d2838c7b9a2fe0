"""evaluate_items on the real built-in tiny model: per-item records, run metrics, automatic batch
size, the chat template, chain of thought with parse diagnostics; and per-item agreement with the
installed lm-evaluation-harness on real Belebele rows (the `bench` extra; skipped without it)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from relxfer.data.belebele import load_belebele
from relxfer.data.prompts import EXTRACTOR_VERSION, PromptBuilder
from relxfer.data.synthetic import SyntheticLanguage, generate
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.evaluate.loop import (
    bind_backend,
    encode_requests,
    evaluate_items,
    make_records,
    run_metrics,
)
from relxfer.models.tiny import BUILTIN_ID
from relxfer.spec.types import ChatTemplateSettings, CotSpec, ModelSpec
from tests.support.lm_eval_tasks import write_belebele_tasks
from tests.test_prompts import BELEBELE, lm_eval_requests

pytestmark = pytest.mark.unit

# One intra-op thread: on a shared 2-core machine two threads can run 50x slower.
torch.set_num_threads(1)

TINY = ModelSpec.from_partial({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"})
V1 = {"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]}
LM_EVAL = {"preset": "lm-eval-belebele"}
CHAT = ChatTemplateSettings.from_partial({}).to_dict()  # `chat_template: true`, resolved
TOL = 1e-4


@pytest.fixture(scope="module")
def backend(relxfer_cache) -> LocalBackend:
    return LocalBackend.load(TINY, None, relxfer_cache)


@pytest.fixture(scope="module")
def items():
    langs = [SyntheticLanguage("base"), SyntheticLanguage("ctrl", overlap=0.0, alphabet="disjoint")]
    data = generate(langs, n_passages=5, questions_per_passage=2, facts_per_passage=3, seed=1)
    return data["base"] + data["ctrl"]


def test_records_and_metrics(backend, items):
    builder = PromptBuilder.from_spec(V1)
    result = evaluate_items(backend, items, builder, batch_size=3, progress=False)
    assert len(result.records) == len(items)
    for record, item in zip(result.records, items):
        assert set(record) == {
            "question_id",
            "passage_id",
            "language",
            "gold",
            "predicted",
            "correct",
            "logprob_1",
            "logprob_2",
            "logprob_3",
            "logprob_4",
            "prompt_template",
        }
        assert (record["question_id"], record["passage_id"], record["language"], record["gold"]) == (
            item.question_id,
            item.passage_id,
            item.language,
            item.gold,
        )
        logprobs = [record[f"logprob_{label}"] for label in builder.labels]
        assert all(lp < 0 for lp in logprobs)
        assert record["predicted"] == int(np.argmax(logprobs))
        assert record["correct"] == int(record["predicted"] == item.gold)
        assert record["prompt_template"] == builder.template_id
    m = result.metrics
    assert m["n_items"] == len(items)
    assert m["accuracy"] == pytest.approx(np.mean([r["correct"] for r in result.records]))
    assert 0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1
    assert m["items_per_s"] > 0
    assert "parse_failure_rate" not in m


def test_scores_are_brute_force_log_probs_and_batch_size_free(backend, items):
    """The records' log-probs are the brute-force continuation log-probs of the rendered prompt
    (a check on evaluate's request building; the backend's own tests cover the scoring), and
    the automatic batch size (None) gives the same scores as fixed ones."""
    builder = PromptBuilder.from_spec(V1)
    auto = evaluate_items(backend, items, builder, batch_size=None, progress=False)
    fixed = evaluate_items(backend, items, builder, batch_size=1, progress=False)
    columns = [f"logprob_{label}" for label in builder.labels]
    auto_lp = np.array([[r[c] for c in columns] for r in auto.records])
    assert np.abs(auto_lp - np.array([[r[c] for c in columns] for r in fixed.records])).max() < TOL
    contexts, conts = encode_requests(backend, [builder.direct(i) for i in items[:3]], builder.continuations())
    brute = backend.label_logprobs_bruteforce(contexts, conts)
    assert np.abs(auto_lp[:3] - brute).max() < TOL


def test_chat_template_prompts_go_through_the_backend(backend, items):
    builder = PromptBuilder.from_spec(V1, CHAT)
    result = evaluate_items(backend, items[:4], builder, batch_size=2, progress=False)
    bound = bind_backend(builder, backend)
    assert result.records[0]["prompt_template"] == bound.template_id != PromptBuilder.from_spec(V1).template_id
    prompt = bound.direct(items[0])
    assert prompt == f"<|user|>\n{PromptBuilder.from_spec(V1).direct(items[0])}<|eos|>\n<|assistant|>\n"
    # The trailing newline moves onto the continuation (lm-eval's rule): "\n1" is scored.
    contexts, conts = encode_requests(backend, [prompt], bound.continuations())
    assert backend.decode(conts[0][0]) == "\n1"
    scored = backend.label_logprobs_bruteforce(contexts, conts)[0]
    assert [result.records[0][f"logprob_{label}"] for label in builder.labels] == pytest.approx(scored, abs=TOL)


def test_chat_keeps_exactly_one_bos(backend):
    """A template that writes the BOS itself: the chat format drops it when `encode` adds one."""
    tokenizer = copy.deepcopy(backend.tokenizer)
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    bos = tokenizer.bos_token_id
    for add_bos in (True, False):
        other = LocalBackend(backend.model, tokenizer, add_bos_token=add_bos)
        for rendered in (
            other.chat_format(CHAT).answer_prompt("hello"),
            other.chat_format(CHAT).generation_prompt("hi"),
        ):
            ids = other.encode(rendered)
            assert ids[0] == bos and ids.count(bos) == 1


def test_cot_records_and_diagnostics(backend, items):
    builder = PromptBuilder.from_spec(V1)
    cot = CotSpec(max_new_tokens=6, stop=("\n\n",))
    result = evaluate_items(backend, items[:4], builder, cot=cot, batch_size=2, progress=False)
    records, m = result.records, result.metrics
    for record in records:
        assert isinstance(record["cot_text"], str) and "\n\n" not in record["cot_text"]
        assert record["extracted"] in (-1, 0, 1, 2, 3)
        assert record["extractor"] == EXTRACTOR_VERSION
        if record["extracted"] == -1:
            assert record["extracted_correct"] == 0
    assert m["parse_failure_rate"] == pytest.approx(np.mean([r["extracted"] == -1 for r in records]))
    assert m["extracted_accuracy"] == pytest.approx(np.mean([r["extracted_correct"] for r in records]))
    # The scored prediction reads the labels after reasoning + answer cue: the same greedy text.
    again = evaluate_items(backend, items[:4], builder, cot=cot, batch_size=None, progress=False)
    assert [r["cot_text"] for r in again.records] == [r["cot_text"] for r in records]
    assert [r["predicted"] for r in again.records] == [r["predicted"] for r in records]


def test_parse_failures_never_earn_credit(items):
    """Extractor diagnostics from given reasoning texts and log-probs (no model): the failure
    rate, extracted accuracy with failures counted wrong, agreement among parsed items only."""
    builder = PromptBuilder.from_spec(V1)
    chosen = items[:4]
    golds = [item.gold for item in chosen]
    texts = [
        f"so the answer is {golds[0] + 1}",  # parsed, correct
        "I cannot tell.",  # parse failure
        f"Answer: {(golds[2] + 1) % 4 + 1}",  # parsed, wrong
        "no label here either",  # parse failure
    ]
    logprobs = np.full((4, 4), -2.0)
    for i, gold in enumerate(golds):
        logprobs[i, gold] = -1.0  # the scored answer is gold everywhere
    records = make_records(chosen, builder, logprobs, texts)
    assert [r["extracted"] for r in records] == [golds[0], -1, (golds[2] + 1) % 4, -1]
    assert [r["extracted_correct"] for r in records] == [1, 0, 0, 0]
    assert [r["correct"] for r in records] == [1, 1, 1, 1]
    m = run_metrics(records)
    assert m["parse_failure_rate"] == 0.5
    assert m["extracted_accuracy"] == 0.25  # not 0.25 + 0.5 * 0.25 chance credit
    assert m["extracted_scored_agreement"] == 0.5  # 1 of the 2 parsed agree
    assert m["accuracy"] == 1.0 and "items_per_s" not in m


# ---------------------------------------------------------------------------------------------
# Same model, same data: relxfer's per-item predictions equal lm-evaluation-harness's


@pytest.fixture(scope="module")
def harness(backend, belebele_dir, tmp_path_factory):
    pytest.importorskip("lm_eval", reason='the `test` extra: pip install -e ".[test]"')
    from lm_eval.models.huggingface import HFLM

    # lm-eval 0.4.13's default BOS policy (add_bos_token=None) is the tokenizer's own: this
    # tokenizer prepends BOS, so relxfer's backend is told to do the same.
    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=4)
    ours = LocalBackend(backend.model, backend.tokenizer, add_bos_token=True)
    task_dir = write_belebele_tasks(tmp_path_factory.mktemp("lm-eval-tasks"), ["eng_Latn", "zho_Hans"], BELEBELE)
    return lm, ours, task_dir


def harness_loglikelihoods(lm, task_dir, code: str, limit: int, chat: bool) -> np.ndarray:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[f"belebele_local_{code}"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        apply_chat_template=chat,
        verbosity="ERROR",
    )
    samples = sorted(out["samples"][f"belebele_local_{code}"], key=lambda s: s["doc_id"])
    return np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])


@pytest.mark.parametrize("code, limit, chat", [("eng_Latn", 12, False), ("zho_Hans", 6, False), ("eng_Latn", 4, True)])
def test_predictions_equal_lm_eval_harness(harness, code, limit, chat):
    lm, ours, task_dir = harness
    theirs = harness_loglikelihoods(lm, task_dir, code, limit, chat)
    items = load_belebele([code], path=BELEBELE).items_by_language[code][:limit]
    builder = PromptBuilder.from_spec(LM_EVAL, CHAT if chat else None)
    if chat:  # the chat-templated requests are byte-identical too
        requests = lm_eval_requests(task_dir, code, limit=limit, chat_template=lm.apply_chat_template)
        bound = bind_backend(builder, ours)
        assert [[(bound.direct(i), c) for c in bound.continuations()] for i in items] == [
            requests[d] for d in range(limit)
        ]
    result = evaluate_items(ours, items, builder, batch_size=None, progress=False)
    mine = np.array([[r[f"logprob_{label}"] for label in builder.labels] for r in result.records])
    assert np.abs(mine - theirs).max() < TOL
    assert [r["predicted"] for r in result.records] == [int(np.argmax(row)) for row in theirs]
