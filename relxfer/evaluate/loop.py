"""Evaluate a backend on items: score the answer labels by log-probability (direct prompt), or
generate reasoning first and then score the labels (chain of thought). Produces per-item records
and run metrics. Speaks to the model only through the Backend interface.

Scoring: one request per item, its continuations the labels as the preset appends them. The
backend scores all labels from one forward pass when each is a single token, and falls back to
full continuation scoring otherwise; it batches longest first, `batch_size` rows a batch or an
automatic size within its memory bound (batch_size None).

Chain of thought: greedy reasoning after the CoT cue (max_new_tokens, stop strings), then the
answer cue, then the labels scored by log-probability as in the direct condition: that scored
answer is the run's prediction. The reasoning is also read by a versioned extractor; the records
and metrics report how often it fails to parse and how often it agrees with the scored answer.
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
from relxfer.spec.types import CotSpec


@dataclass
class EvalResult:
    records: list[dict]
    metrics: dict[str, float]


def bind_backend(builder: PromptBuilder, backend: Backend) -> PromptBuilder:
    """The builder with the backend's chat renderer when the prompt uses a chat template."""
    if not builder.chat_template:
        return builder
    chat = getattr(backend, "chat", None)
    if chat is None:
        raise ModelError(f"backend {getattr(backend, 'name', backend)!r} cannot apply a chat template")
    return builder.bind(chat)


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
    reasoning: list[str] | None = None
    if cot is None:
        prompts = [builder.direct(item) for item in items]
        continuations = builder.continuations()
    else:
        cot_prompts = [builder.cot(item) for item in items]
        reasoning = backend.generate(
            [backend.encode(p) for p in cot_prompts],
            max_new_tokens=cot.max_new_tokens,
            stop=cot.stop,
            batch_size=batch_size,
            progress=progress,
        )
        prompts = [builder.after_reasoning(p, r) for p, r in zip(cot_prompts, reasoning)]
        continuations = builder.cot_continuations()
    logprobs = score_prompts(backend, prompts, continuations, batch_size, progress)
    elapsed = time.perf_counter() - start
    records = make_records(items, builder, logprobs, reasoning)
    return EvalResult(records=records, metrics=run_metrics(records, elapsed))


def make_records(
    items: list[MCItem], builder: PromptBuilder, logprobs: np.ndarray, reasoning: list[str] | None
) -> list[dict]:
    """One record per item: ids, gold, the scored prediction (argmax of the label log-probs; the
    first label on an exact tie, as lm-eval), each label's log-prob, and for CoT the reasoning
    and the extracted answer (-1 on a parse failure)."""
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
            extracted = extract_answer(reasoning[i], builder.labels)
            record["cot_text"] = reasoning[i]
            # -1 marks a parse failure: it never earns chance credit.
            record["extracted"] = -1 if extracted is None else extracted
            record["extracted_correct"] = int(extracted is not None and extracted == item.gold)
            record["extractor"] = EXTRACTOR_VERSION
        records.append(record)
    return records


def run_metrics(records: list[dict], elapsed: float | None = None) -> dict[str, float]:
    """Run metrics from the records: accuracy, n_items, the 95% interval clustered by passage,
    items/s (given the elapsed seconds) and, for CoT records, parse_failure_rate,
    extracted_accuracy (a parse failure counts as wrong) and extracted_scored_agreement (among
    the parsed items: the extracted answer equals the scored one)."""
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
    return metrics
