"""Simulated answers -> what the runner logs -> compare's item frame.

Each simulated evaluation run becomes the records `relxfer.evaluate.loop.make_records` writes (the
runner's own function: predicted = argmax of the label log-probs, correct, per-label log-probs,
and for CoT the reasoning text, the extracted answer with -1 for a parse failure) and the tags
the runner sets (`relxfer.model`, `relxfer.condition`, ..., `relxfer.seed` empty for seedless
baseline and CoT runs). The tables are assembled as `Tracker.load_predictions` assembles
downloaded tables and handed to `relxfer.compare.frame.assemble_items`, so a simulated study
reaches the statistics through the same code as a logged one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from relxfer.compare.frame import RUN_COLUMNS, assemble_items, run_row
from relxfer.data.items import MCItem
from relxfer.data.prompts import EXTRACTOR_VERSION, PromptBuilder
from relxfer.evaluate.loop import make_records
from relxfer.spec.types import Condition
from relxfer.tracking.client import TAG, Tracker

SEEDLESS_CONDITIONS = ("baseline", "cot")  # the runner scores them once per model x language


@dataclass
class SimRun:
    """One simulated evaluation run: its design factors and, per question, whether the scored
    answer is right and (CoT) whether the reasoning failed to commit to an answer."""

    model: str
    condition: str
    language: str
    group: str
    role: str
    seed: int | None  # None: seedless (baseline, cot)
    correct: np.ndarray
    parse_failed: np.ndarray | None = None


@dataclass(frozen=True)
class Questions:
    """The parallel questions of a study: the same ids, passages and gold labels in every language."""

    question_ids: list[str]
    passage_ids: list[str]
    gold: np.ndarray
    passage_of: np.ndarray  # passage index of each question

    @classmethod
    def make(cls, rng: np.random.Generator, n_questions: int, questions_per_passage: int, n_options: int = 4):
        passage_of = np.arange(n_questions) // questions_per_passage
        return cls(
            [f"q{i:03d}" for i in range(n_questions)],
            [f"p{p:03d}" for p in passage_of],
            rng.integers(0, n_options, n_questions),
            passage_of,
        )


def passage_uniforms(rng: np.random.Generator, shape: tuple, passage_of: np.ndarray, rho) -> np.ndarray:
    """Uniforms of `shape` (..., question), correlated within passages through a Gaussian copula
    with latent correlation `rho` (a scalar, or one value per leading index): marginally uniform,
    so each answer keeps its probability while a run's answers to one passage move together."""
    rho = np.asarray(rho, dtype=float)
    if (rho < 0).any() or (rho > 1).any():
        raise ValueError(f"a within-passage correlation is in [0, 1], not {rho}")
    rho = rho.reshape(rho.shape + (1,) * (len(shape) - rho.ndim))
    shared = rng.normal(size=(*shape[:-1], passage_of.max() + 1))[..., passage_of]
    return special.ndtr(np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=shape))


def draw_answers(rng, p: np.ndarray, passage_of: np.ndarray, rho=0.0) -> np.ndarray:
    """0/1 answers with probabilities `p` (..., question), correlated within passages."""
    return (passage_uniforms(rng, p.shape, passage_of, rho) < p).astype(np.int64)


def label_logprobs(rng: np.random.Generator, predicted: np.ndarray, n_options: int) -> np.ndarray:
    """Log-probs over the labels (rows sum to 1 in probability) whose argmax is `predicted`."""
    scores = rng.gumbel(size=(len(predicted), n_options))
    rows = np.arange(len(predicted))
    scores[rows, predicted] = scores.max(axis=1) + rng.exponential(1.0, len(predicted)) + 1e-3
    top = scores.max(axis=1, keepdims=True)
    return scores - (top + np.log(np.exp(scores - top).sum(axis=1, keepdims=True)))


def runs_to_items(
    rng: np.random.Generator, runs: list[SimRun], questions: Questions, via_records: bool = False
) -> pd.DataFrame:
    """The item frame compare builds from these runs, had the runner logged them.

    `via_records=True` writes every run's records with the runner's own `make_records` (slow:
    a Python loop over items); the default builds the same columns and values with array
    operations. The tests check that both give the same frame."""
    builder = PromptBuilder.from_spec({})
    layout = _Layout(tuple(builder.labels), builder.template_id)
    metas, tables, run_ids, frames = [], [], [], []
    items_of: dict[str, list[MCItem]] = {}
    for index, run in enumerate(runs):
        wrong = (questions.gold + rng.integers(1, len(layout.labels), len(questions.gold))) % len(layout.labels)
        predicted = np.where(run.correct == 1, questions.gold, wrong)
        logprobs = label_logprobs(rng, predicted, len(layout.labels))
        failed = None
        if Condition(run.condition).uses_cot:
            failed = np.zeros(len(predicted), bool) if run.parse_failed is None else np.asarray(run.parse_failed, bool)
        if via_records:
            items = items_of.setdefault(run.language, _mc_items(run.language, questions, layout.labels))
            reasoning = None if failed is None else [_reasoning(layout.labels, p, f) for p, f in zip(predicted, failed)]
            records = make_records(items, layout, logprobs, reasoning)
            tables.append({"columns": list(records[0]), "data": [list(r.values()) for r in records]})
        else:
            frames.append(_table(layout, run.language, questions, predicted, logprobs, failed))
        run_id = f"sim{index:05d}"
        tags = {
            f"{TAG}kind": "evaluate",
            f"{TAG}model": run.model,
            f"{TAG}condition": run.condition,
            f"{TAG}language": run.language,
            f"{TAG}group": run.group,
            f"{TAG}role": run.role,
            f"{TAG}family": run.group,
            f"{TAG}seed": "" if run.seed is None else str(run.seed),
        }
        metas.append(run_row(tags, run_id, "sim", {"accuracy": float(np.mean(run.correct)), "n_items": len(predicted)}))
        run_ids.append(run_id)
        if not via_records:
            frames[-1]["run_id"] = np.full(len(predicted), run_id, dtype=object)
    meta = pd.DataFrame(metas, columns=RUN_COLUMNS)
    predictions = Tracker._tables_frame(tables, run_ids) if via_records else _concat(frames)
    return assemble_items(meta, predictions)


def _concat(tables: list[dict]) -> pd.DataFrame:
    """As `Tracker._tables_frame`: the tables of one column layout stacked (one DataFrame per
    layout, built once: per-run frames cost more than the statistics), then the layouts
    concatenated (columns a layout lacks become NaN)."""
    layouts: dict[tuple, list[dict]] = {}
    for table in tables:
        layouts.setdefault(tuple(table), []).append(table)
    stacked = [
        pd.DataFrame({c: np.concatenate([t[c] for t in group]) for c in columns}) for columns, group in layouts.items()
    ]
    return pd.concat(stacked, ignore_index=True) if len(stacked) > 1 else stacked[0]


@dataclass(frozen=True)
class _Layout:
    """What `make_records` reads from a PromptBuilder (its template id computed once)."""

    labels: tuple[str, ...]
    template_id: str


def _mc_items(language: str, questions: Questions, labels) -> list[MCItem]:
    return [
        MCItem(qid, pid, language, f"Passage {pid}.", f"Question {qid}?", tuple(labels), int(gold))
        for qid, pid, gold in zip(questions.question_ids, questions.passage_ids, questions.gold)
    ]


def _reasoning(labels, predicted: int, failed: bool) -> str:
    """A reasoning text that commits to the scored label, or to none (a parse failure)."""
    return REASONING_FAILED if failed else REASONING.format(label=labels[predicted])


REASONING = "Reading the passage again. The answer is {label}."
REASONING_FAILED = "Reading the passage again. I am not sure."


def _table(layout: _Layout, language, questions: Questions, predicted, logprobs, failed) -> dict:
    """The columns `make_records` would write, as arrays (a run_id column is added by the caller)."""
    n = len(predicted)
    columns = {
        "question_id": np.array(questions.question_ids, dtype=object),
        "passage_id": np.array(questions.passage_ids, dtype=object),
        "language": np.full(n, language, dtype=object),
        "gold": questions.gold.astype(np.int64),
        "predicted": predicted.astype(np.int64),
        "correct": (predicted == questions.gold).astype(np.int64),
        **{f"logprob_{label}": logprobs[:, j] for j, label in enumerate(layout.labels)},
        "prompt_template": np.full(n, layout.template_id, dtype=object),
    }
    if failed is not None:
        extracted = np.where(failed, -1, predicted).astype(np.int64)
        columns |= {
            "cot_text": np.array([_reasoning(layout.labels, p, f) for p, f in zip(predicted, failed)], dtype=object),
            "extracted": extracted,
            "extracted_correct": ((extracted == questions.gold) & ~failed).astype(np.int64),
            "extractor": np.full(n, EXTRACTOR_VERSION, dtype=object),
        }
    return columns


def language_names(n_related: int, n_control: int, related_names, control_names) -> list[str]:
    related = [related_names[i] if i < len(related_names) else f"rel{i + 1}" for i in range(n_related)]
    control = [control_names[i] if i < len(control_names) else f"ctl{i + 1}" for i in range(n_control)]
    return related + control
