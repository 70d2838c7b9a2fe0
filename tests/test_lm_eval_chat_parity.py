"""Parity with lm-evaluation-harness 0.4.13 under each family's chat template: on every built-in
twin (the real Qwen3, Qwen3-2507, gpt-oss and DeepSeek-V3.1 templates on their tokenizers), the
harness's HF model (`HFLM` on the twin's directory) with `apply_chat_template`, a
`system_instruction` and the task's `gen_prefix` scores 100 real English Belebele questions
exactly as relxfer's local engine does with the same format declared (`system_prompt`,
`answer_prefix`, the template arguments) and the `lm-eval-belebele` preset: the same token ids
per request, every label's log-prob within 1e-4, the same predictions.

The 100 questions are those with the shortest passages: the harness computes the log-softmax
over every position of a 150k-200k-token vocabulary, so the cost grows with the prompt."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest

from relxfer.data.belebele import load_belebele
from relxfer.data.prompts import PromptBuilder
from relxfer.evaluate.local_backend import LocalBackend
from relxfer.evaluate.loop import bind_backend, evaluate_items
from relxfer.models import real_tokenizers, twins
from relxfer.spec.types import ChatTemplateSettings, ModelSpec
from tests.support import shared_data
from tests.support.lm_eval_tasks import write_belebele_tasks

pytestmark = pytest.mark.integration

CODE = "eng_Latn"
N_QUESTIONS = 100
TOL = 1e-4
SYSTEM = "You answer multiple-choice questions about a passage with the letter of the correct option."
# lm-eval's gen_prefix is relxfer's answer_prefix: the assistant's final message opens with it,
# and the label follows after the preset's delimiter " " (the prefix ends in no whitespace).
PREFIX = "The answer is"
# The template arguments each family's model declares in specs/full.json (thinking off).
TEMPLATE_ARGS = {
    "builtin:qwen3-twin": {"enable_thinking": False},
    "builtin:qwen3-moe-twin": {},
    "builtin:gpt-oss-twin": {},
    "builtin:deepseek-v3-twin": {"thinking": False},
}
# The end of the rendered prompt: each template's own header for a final answer, then the prefix.
PROMPT_ENDS = {
    "builtin:qwen3-twin": "<|im_start|>assistant\n<think>\n\n</think>\n\nThe answer is",
    "builtin:qwen3-moe-twin": "<|im_start|>assistant\n<think>\n\n</think>\n\nThe answer is",
    "builtin:gpt-oss-twin": "<|start|>assistant<|channel|>final<|message|>The answer is",
    "builtin:deepseek-v3-twin": "<｜Assistant｜></think>The answer is",
}


@pytest.fixture(autouse=True)
def real_tokenizers_dir(monkeypatch):
    shared_data.need(shared_data.TOKENIZERS / "qwen3" / "vocab.json", "the real tokenizer files")
    monkeypatch.delenv(real_tokenizers.TOKENIZERS_ENV, raising=False)


@pytest.fixture(scope="module")
def questions(belebele_dir, tmp_path_factory) -> Path:
    """A Belebele directory holding the 100 English rows with the shortest passages, as the
    harness and relxfer both read it."""
    rows = [line for line in (belebele_dir / f"{CODE}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rows.sort(key=lambda line: len(json.loads(line)["flores_passage"]))
    root = tmp_path_factory.mktemp("belebele-short")
    (root / f"{CODE}.jsonl").write_text("\n".join(rows[:N_QUESTIONS]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def task_dir(questions, tmp_path_factory) -> Path:
    pytest.importorskip("lm_eval", reason='the `test` extra: pip install -e ".[test]"')
    return write_belebele_tasks(tmp_path_factory.mktemp("lm-eval-tasks"), [CODE], questions, gen_prefix=PREFIX)


def harness_requests(lm, task_dir: Path) -> list[list[tuple[str, str]]]:
    """The harness's (context, continuation) requests per document, as simple_evaluate builds them."""
    from lm_eval.tasks import TaskManager, get_task_dict

    name = f"belebele_local_{CODE}"
    task = get_task_dict([name], TaskManager(include_path=str(task_dir), include_defaults=False))[name]
    task.build_all_requests(
        limit=N_QUESTIONS,
        rank=0,
        world_size=1,
        apply_chat_template=True,
        chat_template=lm.apply_chat_template,
        system_instruction=SYSTEM,
    )
    requests: dict[int, list[tuple[str, str]]] = {}
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        requests.setdefault(instance.doc_id, []).append(tuple(instance.arguments))
    return [requests[d] for d in sorted(requests)]


def harness_logprobs(lm, task_dir: Path) -> np.ndarray:
    import lm_eval
    from lm_eval.tasks import TaskManager

    name = f"belebele_local_{CODE}"
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=N_QUESTIONS,
        log_samples=True,
        bootstrap_iters=0,
        apply_chat_template=True,
        system_instruction=SYSTEM,
        verbosity="ERROR",
    )
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])


@pytest.mark.parametrize("builtin_id", list(TEMPLATE_ARGS))
def test_label_logprobs_equal_lm_eval_under_the_chat_template(
    builtin_id, questions, task_dir, relxfer_cache, record_property
):
    from lm_eval.models.huggingface import HFLM

    args = TEMPLATE_ARGS[builtin_id]
    # gpt-oss's template stamps the day it renders (transformers' strftime_now, local time):
    # relxfer is given that day as its fixed date.
    today = datetime.date.today()
    settings = ChatTemplateSettings.from_partial(
        {"template_args": args, "system_prompt": SYSTEM, "answer_prefix": PREFIX, "date": today.isoformat()}
    ).to_dict()
    model = ModelSpec.from_partial({"name": builtin_id.split(":")[1], "source": builtin_id, "dtype": "float32"})
    ours = LocalBackend.load(model, None, relxfer_cache)
    lm = HFLM(
        pretrained=str(twins.build_twin(relxfer_cache, builtin_id)),
        dtype="float32",
        device="cpu",
        batch_size=8,
        chat_template_args=args,
    )

    builder = bind_backend(PromptBuilder.from_spec({"preset": "lm-eval-belebele"}, settings), ours)
    items = load_belebele([CODE], path=questions).items_by_language[CODE]
    assert len(items) == N_QUESTIONS
    theirs_requests = harness_requests(lm, task_dir)
    theirs = harness_logprobs(lm, task_dir)
    if datetime.date.today() != today:
        pytest.skip("the day changed while the harness rendered its prompts (gpt-oss stamps it)")

    mine_requests = [[(builder.direct(item), c) for c in builder.continuations()] for item in items]
    assert mine_requests[0][0][0].endswith(PROMPT_ENDS[builtin_id])
    assert [c for _, c in mine_requests[0]] == [" A", " B", " C", " D"]
    # The text is the harness's except for a BOS the template writes (DeepSeek's), which relxfer
    # leaves to the encoder; the token ids of every request are the harness's.
    bos = lm.tokenizer.bos_token or ""
    assert [[(c.removeprefix(bos), x) for c, x in doc] for doc in theirs_requests] == mine_requests
    for theirs_doc, mine_doc in zip(theirs_requests, mine_requests):
        for their_request, my_request in zip(theirs_doc, mine_doc):
            assert lm._encode_pair(*their_request) == ours.split_continuation(*my_request)

    result = evaluate_items(ours, items, builder, batch_size=None, progress=False)
    mine = np.array([[r[f"logprob_{label}"] for label in builder.labels] for r in result.records])
    assert theirs.shape == mine.shape == (N_QUESTIONS, 4)
    record_property("max_abs_logprob_diff", float(np.abs(mine - theirs).max()))
    assert np.abs(mine - theirs).max() < TOL
    assert [r["predicted"] for r in result.records] == [int(np.argmax(row)) for row in theirs]
