"""Evaluate a backend on items: score the answer labels by log-probability (direct prompt), or
generate reasoning first and then score the labels (chain of thought). Produces per-item records
and run metrics. Speaks to the model only through the Backend interface."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend
from .data.items import MCItem
from .intervals import clustered_accuracy_interval
from .prompts import EXTRACTOR_VERSION, PromptBuilder, extract_answer


@dataclass
class EvalResult:
    records: list[dict]
    metrics: dict[str, float]


def _score(backend: Backend, prompts: list[str], builder: PromptBuilder, batch_size, progress) -> np.ndarray:
    pairs = [[backend.split_continuation(p, c) for c in builder.continuations()] for p in prompts]
    # The context ids are the same for every continuation of a prompt (the split depends on the
    # context only through its trailing whitespace, which no preset ends with).
    context_ids = [p[0][0] for p in pairs]
    continuation_ids = [[cont for _, cont in p] for p in pairs]
    return backend.label_logprobs(context_ids, continuation_ids, batch_size=batch_size, progress=progress)


def evaluate_items(
    backend: Backend,
    items: list[MCItem],
    builder: PromptBuilder,
    cot: dict | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score `items`. With `cot` (max_new_tokens, stop), generate reasoning before scoring."""
    start = time.perf_counter()
    reasoning: list[str] | None = None
    if cot is None:
        prompts = [builder.direct(item) for item in items]
    else:
        cot_prompts = [builder.cot(item) for item in items]
        reasoning = backend.generate(
            [backend.encode(p) for p in cot_prompts],
            max_new_tokens=cot["max_new_tokens"],
            stop=cot["stop"],
            batch_size=batch_size,
            progress=progress,
        )
        prompts = [builder.after_reasoning(p, r) for p, r in zip(cot_prompts, reasoning)]
    logprobs = _score(backend, prompts, builder, batch_size, progress)
    elapsed = time.perf_counter() - start
    return EvalResult(
        records=_records(items, builder, logprobs, reasoning),
        metrics=_metrics(items, logprobs, reasoning, builder, elapsed),
    )


def _records(items, builder: PromptBuilder, logprobs: np.ndarray, reasoning) -> list[dict]:
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
            record["extracted_correct"] = int(extracted == item.gold)
            record["extractor"] = EXTRACTOR_VERSION
        records.append(record)
    return records


def _metrics(items, logprobs: np.ndarray, reasoning, builder: PromptBuilder, elapsed: float) -> dict[str, float]:
    correct = (np.argmax(logprobs, axis=1) == np.array([item.gold for item in items])).astype(int)
    low, high = clustered_accuracy_interval(correct, [item.passage_id for item in items])
    metrics = {
        "accuracy": float(correct.mean()),
        "n_items": len(items),
        "ci_low": low,
        "ci_high": high,
        "items_per_s": len(items) / elapsed if elapsed > 0 else float("nan"),
    }
    if reasoning is not None:
        extracted = [extract_answer(text, builder.labels) for text in reasoning]
        parsed = [(e, int(np.argmax(lp))) for e, lp in zip(extracted, logprobs) if e is not None]
        metrics["parse_failure_rate"] = 1 - len(parsed) / len(items)
        metrics["extracted_accuracy"] = float(np.mean([e == item.gold for e, item in zip(extracted, items)]))
        metrics["extracted_scored_agreement"] = float(np.mean([e == s for e, s in parsed])) if parsed else float("nan")
    return metrics
