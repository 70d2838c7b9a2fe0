"""Evaluate a backend on items: score the answer labels by log-probability (direct prompt), or
generate reasoning first and then score the labels (chain of thought). Produces per-item records
and run metrics. Speaks to the model only through the Backend interface.

Scoring: one request per item, its continuations the labels as the preset appends them. The
backend scores all labels from one forward pass when each is a single token, and falls back to
full continuation scoring otherwise; it batches longest first, `batch_size` rows a batch or an
automatic size within its memory bound (batch_size None).

Chain of thought: greedy reasoning after the CoT cue, then the labels scored by log-probability
as in the direct condition: that scored answer is the run's prediction. With a raw completion
prompt the reasoning is text (max_new_tokens, stop strings) followed by the answer cue. Under a
chat template the generated ids are kept and split at the family's markers (`</think>`, harmony's
final channel; relxfer.models.reasoning): the labels are scored after the closed reasoning and
the answer header, with reasoning the budget cut short closed the family's way and counted
(`truncated_rate`); stop strings cut only the answer after the reasoning. A reply without marked
reasoning is read as text, as with a raw completion prompt. The reasoning (or the answer after
it) is also read by a versioned extractor; the records and metrics report how often it fails to
parse and how often it agrees with the scored answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from relxfer.data.items import MCItem
from relxfer.data.prompts import EXTRACTOR_VERSION, PromptBuilder, extract_answer
from relxfer.errors import ModelError
from relxfer.evaluate.base import Backend
from relxfer.evaluate.intervals import clustered_accuracy_interval
from relxfer.models.chat_format import ChatFormat
from relxfer.models.reasoning import THINKING_BUDGET, SplitGeneration, split_generation
from relxfer.models.tokenization import cut_at_stop
from relxfer.spec.types import CotSpec


@dataclass
class EvalResult:
    records: list[dict]
    metrics: dict[str, float]


def bind_backend(builder: PromptBuilder, backend: Backend) -> PromptBuilder:
    """The builder with the backend's chat renderer when the prompt uses a chat template."""
    if builder.chat is None:
        return builder
    chat_format = getattr(backend, "chat_format", None)
    if chat_format is None:
        raise ModelError(f"backend {getattr(backend, 'name', backend)!r} cannot apply a chat template")
    return builder.bind(chat_format(builder.chat))


@dataclass
class Reasoning:
    """What a model reasoned for each item: the reasoning text, the answer it wrote after it
    (marked reasoning only) and whether the budget cut the reasoning short (None: not known)."""

    texts: list[str]
    answers: list[str | None]
    truncated: list[bool | None]


def reasoning_budget(builder: PromptBuilder, cot: CotSpec) -> int:
    """Most tokens of a CoT generation: the format's `reasoning_budget`, else THINKING_BUDGET
    for a family that marks its reasoning, else `cot.max_new_tokens`."""
    if builder.chat is not None and builder.chat.get("reasoning_budget") is not None:
        return int(builder.chat["reasoning_budget"])
    renderer = builder.renderer
    if isinstance(renderer, ChatFormat) and renderer.reasoning.kind != "plain":
        return THINKING_BUDGET
    return cot.max_new_tokens


def without_moved_whitespace(tail: list[int], label_ids: list[list[int]]) -> list[int]:
    """`tail` without the ids the labels' continuations start with: lm-eval's split moves a
    header's trailing whitespace (Qwen3's "\n\n" after `</think>`) onto every label, so the
    context after reasoning ends where the direct prompt's context ends."""
    shared = 0
    while all(len(ids) > shared + 1 and ids[shared] == label_ids[0][shared] for ids in label_ids):
        shared += 1
    for n in range(shared, 0, -1):
        if tail[-n:] == label_ids[0][:n]:
            return tail[:-n]
    return tail


def marked_cot(
    backend: Backend, builder: PromptBuilder, items: list[MCItem], cot: CotSpec, batch_size, progress
) -> tuple[np.ndarray, Reasoning]:
    """Chain of thought on token ids under a chat template (see the module's description)."""
    renderer = builder.renderer
    assert isinstance(renderer, ChatFormat)  # bind_backend binds the backend's ChatFormat
    cot_prompts = [builder.cot(item) for item in items]
    prompt_ids = [backend.encode(p) for p in cot_prompts]
    generated = backend.generate_ids(prompt_ids, reasoning_budget(builder, cot), batch_size, progress)
    splits: list[SplitGeneration | None] = [
        split_generation(renderer.reasoning, ids, renderer.end_ids) for ids, _ in generated
    ]
    logprobs = np.zeros((len(items), len(builder.labels)))
    texts: list[str] = [""] * len(items)
    answers: list[str | None] = [None] * len(items)
    truncated: list[bool | None] = [None] * len(items)
    marked = [i for i, split in enumerate(splits) if split is not None]
    if marked:
        # The labels' ids exactly as the direct condition scores them after the answer header.
        direct = builder.direct(items[0])
        label_ids = [backend.split_continuation(direct, c)[1] for c in builder.continuations()]
        contexts = []
        for i in marked:
            split = splits[i]
            assert split is not None
            contexts.append(list(prompt_ids[i]) + without_moved_whitespace(list(split.context_tail), label_ids))
            texts[i] = backend.decode(split.reasoning_ids)
            answers[i] = cut_at_stop(backend.decode(split.answer_ids), cot.stop)
            truncated[i] = split.truncated
        scored = backend.label_logprobs(contexts, [label_ids] * len(marked), batch_size=batch_size, progress=progress)
        logprobs[marked] = scored
    plain = [i for i, split in enumerate(splits) if split is None]
    if plain:
        for i in plain:
            ids, ended = generated[i]
            whole = backend.decode(ids)
            texts[i] = cut_at_stop(whole, cot.stop)
            truncated[i] = not ended and texts[i] == whole
        prompts = [builder.after_reasoning(cot_prompts[i], texts[i]) for i in plain]
        logprobs[plain] = score_prompts(backend, prompts, builder.cot_continuations(), batch_size, progress)
    return logprobs, Reasoning(texts, answers, truncated)


def encode_requests(backend: Backend, prompts: list[str], continuations: list[str]):
    """(context ids per prompt, continuation ids per prompt and label), split the lm-eval way."""
    contexts, conts = [], []
    for prompt in prompts:
        pairs = [backend.split_continuation(prompt, c) for c in continuations]
        # The context ids do not depend on the continuation: the split encodes the context with
        # its trailing whitespace moved onto the continuation, whatever the continuation is.
        contexts.append(pairs[0][0])
        conts.append([cont for _, cont in pairs])
    return contexts, conts


def score_prompts(
    backend: Backend, prompts: list[str], continuations: list[str], batch_size=None, progress=False
) -> np.ndarray:
    """Log-probability of each continuation after each prompt, shape [n_prompts, n_labels]."""
    contexts, conts = encode_requests(backend, prompts, continuations)
    return backend.label_logprobs(contexts, conts, batch_size=batch_size, progress=progress)


def evaluate_items(
    backend: Backend,
    items: list[MCItem],
    builder: PromptBuilder,
    cot: CotSpec | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score `items`. With `cot` (max_new_tokens, stop), generate reasoning before scoring.
    `batch_size` None lets the backend pick batch sizes within its memory bound."""
    start = time.perf_counter()
    builder = bind_backend(builder, backend)
    reasoning: Reasoning | None = None
    if cot is None:
        prompts = [builder.direct(item) for item in items]
        logprobs = score_prompts(backend, prompts, builder.continuations(), batch_size, progress)
    elif builder.chat_template:
        logprobs, reasoning = marked_cot(backend, builder, items, cot, batch_size, progress)
    else:
        cot_prompts = [builder.cot(item) for item in items]
        texts = backend.generate(
            [backend.encode(p) for p in cot_prompts],
            max_new_tokens=cot.max_new_tokens,
            stop=cot.stop,
            batch_size=batch_size,
            progress=progress,
        )
        reasoning = Reasoning(texts, [None] * len(items), [None] * len(items))
        prompts = [builder.after_reasoning(p, r) for p, r in zip(cot_prompts, texts)]
        logprobs = score_prompts(backend, prompts, builder.cot_continuations(), batch_size, progress)
    elapsed = time.perf_counter() - start
    records = make_records(items, builder, logprobs, reasoning)
    return EvalResult(records=records, metrics=run_metrics(records, elapsed))


def make_records(
    items: list[MCItem], builder: PromptBuilder, logprobs: np.ndarray, reasoning: Reasoning | list[str] | None
) -> list[dict]:
    """One record per item: ids, gold, the scored prediction (argmax of the label log-probs; the
    first label on an exact tie, as lm-eval), each label's log-prob, and for CoT the reasoning,
    the extracted answer (-1 on a parse failure: read from the answer written after marked
    reasoning, else from the reasoning) and, where known, the answer text and whether the
    reasoning was cut short. `reasoning` may be the reasoning texts alone."""
    if isinstance(reasoning, list):  # reasoning texts alone
        reasoning = Reasoning(reasoning, [None] * len(reasoning), [None] * len(reasoning))
    records = []
    for i, item in enumerate(items):
        predicted = int(np.argmax(logprobs[i]))
        record = {
            "question_id": item.question_id,
            "passage_id": item.passage_id,
            "language": item.language,
            "gold": item.gold,
            "predicted": predicted,
            "correct": int(predicted == item.gold),
            **{f"logprob_{label}": float(logprobs[i, j]) for j, label in enumerate(builder.labels)},
            "prompt_template": builder.template_id,
        }
        if reasoning is not None:
            answer = reasoning.answers[i]
            extracted = extract_answer(answer if answer else reasoning.texts[i], builder.labels)
            record["cot_text"] = reasoning.texts[i]
            if answer is not None:
                record["cot_answer"] = answer
            if reasoning.truncated[i] is not None:
                record["cot_truncated"] = int(bool(reasoning.truncated[i]))
            # -1 marks a parse failure: it never earns chance credit.
            record["extracted"] = -1 if extracted is None else extracted
            record["extracted_correct"] = int(extracted is not None and extracted == item.gold)
            record["extractor"] = EXTRACTOR_VERSION
        records.append(record)
    return records


def run_metrics(records: list[dict], elapsed: float | None = None) -> dict[str, float]:
    """Run metrics from the records: accuracy, n_items, the 95% interval clustered by passage,
    items/s (given the elapsed seconds) and, for CoT records, parse_failure_rate,
    extracted_accuracy (a parse failure counts as wrong), extracted_scored_agreement (among
    the parsed items: the extracted answer equals the scored one) and, where known,
    truncated_rate (the share of items whose reasoning the budget cut short)."""
    correct = np.array([r["correct"] for r in records], dtype=float)
    low, high = clustered_accuracy_interval(correct, [r["passage_id"] for r in records])
    metrics = {
        "accuracy": float(correct.mean()) if len(records) else float("nan"),
        "n_items": len(records),
        "ci_low": low,
        "ci_high": high,
    }
    if elapsed is not None:
        metrics["items_per_s"] = len(records) / elapsed if elapsed > 0 else float("nan")
    if records and "extracted" in records[0]:
        parsed = [r for r in records if r["extracted"] >= 0]
        metrics["parse_failure_rate"] = 1 - len(parsed) / len(records)
        metrics["extracted_accuracy"] = float(np.mean([r["extracted_correct"] for r in records]))
        metrics["extracted_scored_agreement"] = (
            float(np.mean([r["extracted"] == r["predicted"] for r in parsed])) if parsed else float("nan")
        )
    if records and "cot_truncated" in records[0]:
        metrics["truncated_rate"] = float(np.mean([r["cot_truncated"] for r in records]))
    return metrics
