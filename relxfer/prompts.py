"""Prompt presets: named, versioned templates that turn an item into a prompt and its answer
continuations. Training uses the same prompt with the gold continuation as the completion."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .data.items import MCItem


@dataclass(frozen=True)
class Preset:
    id: str  # name@version; the version changes whenever the rendered text would change
    template: str  # direct prompt; fields: passage, question, options (rendered), and option_1..n
    option_line: str  # one line per option; fields: label, text
    labels: tuple[str, ...]  # default answer labels
    continuation: str  # how a label is appended to the prompt as the scored continuation
    cot_cue: str  # appended to the direct prompt to ask for reasoning
    answer_cue: str  # appended after the reasoning before the label is scored

    @property
    def hash(self) -> str:
        text = "\x00".join([self.template, self.option_line, self.continuation, self.cot_cue, self.answer_cue])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


PRESETS = {
    "relxfer-v1": Preset(
        id="relxfer-v1@1",
        template=(
            "Read the passage and answer the question with the number of the correct option.\n\n"
            "Passage: {passage}\nQuestion: {question}\n{options}\nAnswer:"
        ),
        option_line="{label}. {text}",
        labels=("1", "2", "3", "4"),
        continuation=" {label}",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
    ),
    # Byte-identical to lm-evaluation-harness 0.4.x's Belebele task (doc_to_text, the choices
    # A-D and the default target delimiter " ").
    "lm-eval-belebele": Preset(
        id="lm-eval-belebele@1",
        template="P: {passage}\nQ: {question}\n{options}\nAnswer:",
        option_line="{label}: {text}",
        labels=("A", "B", "C", "D"),
        continuation=" {label}",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
    ),
}


@dataclass(frozen=True)
class PromptBuilder:
    preset: Preset
    labels: tuple[str, ...]

    @classmethod
    def from_spec(cls, prompt: dict) -> "PromptBuilder":
        preset = PRESETS[prompt["preset"]]
        # lm-eval's Belebele letters are part of the preset; other presets take the spec's labels.
        labels = preset.labels if prompt["preset"] == "lm-eval-belebele" else tuple(prompt["labels"])
        return cls(preset, labels)

    @property
    def template_id(self) -> str:
        return f"{self.preset.id}#{self.preset.hash}"

    def direct(self, item: MCItem) -> str:
        options = "\n".join(
            self.preset.option_line.format(label=label, text=text) for label, text in zip(self.labels, item.options)
        )
        question = item.question.strip() if self.preset.id.startswith("lm-eval") else item.question
        return self.preset.template.format(passage=item.passage, question=question, options=options)

    def continuations(self) -> list[str]:
        return [self.preset.continuation.format(label=label) for label in self.labels]

    def cot(self, item: MCItem) -> str:
        return self.direct(item) + self.preset.cot_cue

    def after_reasoning(self, cot_prompt: str, reasoning: str) -> str:
        return cot_prompt + reasoning + self.preset.answer_cue

    def training_example(self, item: MCItem) -> tuple[str, str]:
        return self.direct(item), self.continuations()[item.gold]


# Versioned answer extractor for generated reasoning: the last "answer is X" / "Answer: X"
# wins; otherwise a lone label on the final line. Anything else is a parse failure.
EXTRACTOR_VERSION = "answer-extractor@1"


def extract_answer(text: str, labels: tuple[str, ...]) -> int | None:
    """Index of the label the generated text commits to, or None when it commits to none."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    cue = re.compile(rf"answer(?:\s+is)?\s*[:\-]?\s*\(?({alternatives})\)?(?![\w])", re.IGNORECASE)
    matches = cue.findall(text)
    if matches:
        return _label_index(matches[-1], labels)
    lines = [line.strip().strip(".):(") for line in text.strip().splitlines() if line.strip()]
    if lines and lines[-1] in labels:
        return labels.index(lines[-1])
    return None


def _label_index(found: str, labels: tuple[str, ...]) -> int | None:
    for i, label in enumerate(labels):
        if found.lower() == label.lower():
            return i
    return None
