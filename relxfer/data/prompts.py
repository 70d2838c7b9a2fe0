"""Prompt presets: named, versioned templates that turn an item into a prompt and its answer
continuations. Training uses the same prompt with the gold continuation as the completion.

Options (the spec's `prompt` object): the preset, the answer labels, the language of the
instruction (`instruction_language`: "en" or "target", from the fixed table below) and the
model's prompt format: a raw completion prompt, or its chat template with settings (template
arguments, system prompt, answer prefix, fixed date; `relxfer.models.chat_format`). Every option
that changes the rendered text changes `PromptBuilder.template_id`, a tag of every run; bound to
a renderer, the id also hashes what the renderer renders.

The chat template belongs to the model, so a builder only applies it once bound to a renderer
(`builder.bind(renderer)`; `evaluate_items` binds the backend's). Evaluation code never calls
the tokenizer: the backend renders the chat turn.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from relxfer.data.items import MCItem
from relxfer.errors import SpecError


@dataclass(frozen=True)
class Preset:
    id: str  # name@version; the version changes whenever the rendered text would change
    template: str  # direct prompt; fields: instruction, passage, question, options (rendered)
    option_line: str  # one line per option; fields: label, text
    labels: tuple[str, ...]  # default answer labels
    delimiter: str  # between the prompt and the label (lm-eval's `target_delimiter`)
    cot_cue: str  # appended to the direct prompt to ask for reasoning
    answer_cue: str  # appended after the reasoning before the label is scored
    strip_question: bool = False  # lm-eval's Belebele template renders `question.strip()`
    fixed_labels: bool = False  # the labels are part of the preset; the spec's labels are ignored
    instruction: str = ""  # the English instruction ("" = the preset has none)

    def fields(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


PRESETS = {
    # The paper's style: an instruction, numbered options, the label scored after "Answer:".
    "relxfer-v1": Preset(
        id="relxfer-v1@1",
        template="{instruction}\n\nPassage: {passage}\nQuestion: {question}\n{options}\nAnswer:",
        option_line="{label}. {text}",
        labels=("1", "2", "3", "4"),
        delimiter=" ",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
        instruction="Read the passage and answer the question with the number of the correct option.",
    ),
    # Byte-identical to lm-evaluation-harness 0.4.x's Belebele task (lm_eval/tasks/belebele/
    # _default_template_yaml): doc_to_text "P: {{flores_passage}}\nQ: {{question.strip()}}\n
    # A: {{mc_answer1}}\n...D: {{mc_answer4}}\nAnswer:", doc_to_choice A-D, the default
    # target_delimiter " " (and "" under a chat template, as lm-eval does without a gen_prefix).
    # tests/test_prompts.py compares it with the installed harness on real Belebele rows.
    "lm-eval-belebele": Preset(
        id="lm-eval-belebele@1",
        template="P: {passage}\nQ: {question}\n{options}\nAnswer:",
        option_line="{label}: {text}",
        labels=("A", "B", "C", "D"),
        delimiter=" ",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
        strip_question=True,
        fixed_labels=True,
    ),
    # Topic or label classification: the text, then the label names as numbered options (SIB-200's
    # seven topics); no question. The labels must number the options (as many as the set has).
    "topic-v1": Preset(
        id="topic-v1@1",
        template="{instruction}\n\nText: {passage}\n{options}\nAnswer:",
        option_line="{label}. {text}",
        labels=("1", "2", "3", "4", "5", "6", "7"),
        delimiter=" ",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
        instruction="Classify the text: answer with the number of the topic it is about.",
    ),
}

# ---------------------------------------------------------------------------------------------
# FIXED STRING TABLE: the relxfer-v1 instruction in the languages of the paper (Semitic targets,
# non-Semitic controls, the Arabic training varieties) and of the Belebele files at hand.
# Bump INSTRUCTIONS_VERSION whenever any string changes: the version is part of template_id.
# Translations by the relxfer authors, not by native speakers; review before publishing.
# Written instructions across the Arabic varieties use Modern Standard Arabic, as Belebele's
# own dialectal prompts do not exist and MSA is the usual register for written instructions.
INSTRUCTIONS_VERSION = "instructions@1"
_MSA = "اقرأ النص وأجب عن السؤال برقم الخيار الصحيح."
INSTRUCTIONS: dict[str, dict[str, str]] = {
    "relxfer-v1": {
        "eng_Latn": "Read the passage and answer the question with the number of the correct option.",
        "arb_Arab": _MSA,
        "acm_Arab": _MSA,
        "apc_Arab": _MSA,
        "ars_Arab": _MSA,
        "ary_Arab": _MSA,
        "arz_Arab": _MSA,
        "heb_Hebr": "קראו את הקטע וענו על השאלה באמצעות מספר האפשרות הנכונה.",
        "amh_Ethi": "ምንባቡን ያንብቡ እና ጥያቄውን በትክክለኛው አማራጭ ቁጥር ይመልሱ።",
        "mlt_Latn": "Aqra s-silta u wieġeb il-mistoqsija bin-numru tal-għażla t-tajba.",
        "jpn_Jpan": "文章を読んで、正しい選択肢の番号で質問に答えてください。",
        "kor_Hang": "지문을 읽고 정답 선택지의 번호로 질문에 답하십시오.",
        "fra_Latn": "Lisez le passage et répondez à la question avec le numéro de la bonne option.",
        "tur_Latn": "Metni okuyun ve soruyu doğru seçeneğin numarasıyla yanıtlayın.",
        "zho_Hans": "阅读文章，并用正确选项的编号回答问题。",
    },
}
INSTRUCTION_LANGUAGES = ("en", "target")

# A model's resolved chat-template settings (`ChatTemplateSettings.to_dict()`).
ChatSettings = Mapping[str, Any]


class ChatRenderer(Protocol):
    """A model's chat template with its settings (relxfer.models.chat_format.ChatFormat)."""

    @property
    def end_text(self) -> str:
        """What ends an assistant message (a training example's completion ends with it)."""

    @property
    def digest(self) -> str:
        """A hash of what the renderer renders."""

    def answer_prompt(self, text: str) -> str:
        """`text` as the user turn, then the final answer opened: the label follows."""

    def generation_prompt(self, text: str) -> str:
        """`text` as the user turn, ending where the assistant's reply begins."""


@dataclass(frozen=True)
class PromptBuilder:
    preset: Preset
    labels: tuple[str, ...]
    instruction_language: str = "en"  # "en" or "target" (the item's language)
    # The model's chat-template settings, resolved (None: a raw completion prompt).
    chat: ChatSettings | None = None
    # The model's chat renderer; set by `bind`.
    renderer: ChatRenderer | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.instruction_language not in INSTRUCTION_LANGUAGES:
            raise SpecError(
                f"prompt.instruction_language must be one of {', '.join(map(repr, INSTRUCTION_LANGUAGES))}, "
                f"got {self.instruction_language!r}"
            )
        if self.instruction_language == "target" and not self.preset.instruction:
            raise SpecError(
                f"prompt.instruction_language 'target' needs a preset with an instruction; "
                f"{self.preset.id} has none (use 'en' or the preset 'relxfer-v1')"
            )

    @classmethod
    def from_spec(cls, prompt: dict, chat: ChatSettings | None = None) -> PromptBuilder:
        """A builder for the spec's `prompt` object (missing options take the schema defaults)
        and a model's resolved chat-template settings (`relxfer.spec.types.chat_settings`; None:
        the prompt's own `chat_template`, which must then be false or a settings object)."""
        name = prompt.get("preset", "relxfer-v1")
        if name not in PRESETS:
            raise SpecError(f"unknown prompt preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        preset = PRESETS[name]
        # lm-eval's Belebele letters are part of the preset; other presets take the spec's labels.
        labels = preset.labels if preset.fixed_labels else tuple(prompt.get("labels", preset.labels))
        if chat is None:
            declared = prompt.get("chat_template", False)
            if declared is True:
                raise SpecError("prompt.chat_template true: resolve it to its settings first (chat_settings)")
            chat = declared or None
        return cls(preset, labels, instruction_language=prompt.get("instruction_language", "en"), chat=chat)

    @property
    def chat_template(self) -> bool:
        """Whether prompts are wrapped in the model's chat template."""
        return self.chat is not None

    def bind(self, renderer: ChatRenderer | None) -> PromptBuilder:
        """This builder with the model's chat renderer (needed when `chat_template` is on)."""
        return replace(self, renderer=renderer)

    # -- identity -----------------------------------------------------------------------------

    @property
    def template_id(self) -> str:
        """name@version#hash, the hash over everything that shapes the rendered text: the
        options, and under a chat template its settings and, once bound, the digest of what the
        model's template renders with them."""
        options: dict[str, Any] = {
            "preset": self.preset.fields(),
            "labels": list(self.labels),
            "instruction_language": self.instruction_language,
            "chat_template": False if self.chat is None else dict(self.chat),
        }
        if self.chat is not None and self.renderer is not None:
            options["rendered"] = self.renderer.digest
        if self.instruction_language == "target":
            options["instructions"] = [INSTRUCTIONS_VERSION, INSTRUCTIONS.get(self.preset.id.split("@")[0], {})]
        blob = json.dumps(options, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return f"{self.preset.id}#{hashlib.sha256(blob).hexdigest()[:12]}"

    # -- rendering ----------------------------------------------------------------------------

    def instruction(self, language: str) -> str:
        """The preset's instruction in English or in `language` (per `instruction_language`)."""
        if self.instruction_language == "en" or not self.preset.instruction:
            return self.preset.instruction
        table = INSTRUCTIONS.get(self.preset.id.split("@")[0], {})
        if language not in table:
            raise SpecError(
                f"no {self.preset.id} instruction for language {language!r} in {INSTRUCTIONS_VERSION} "
                f"(known: {', '.join(sorted(table))}); set prompt.instruction_language to 'en'"
            )
        return table[language]

    def user_text(self, item: MCItem) -> str:
        """The prompt text before any chat template."""
        options = "\n".join(
            self.preset.option_line.format(label=label, text=text) for label, text in zip(self.labels, item.options)
        )
        question = item.question.strip() if self.preset.strip_question else item.question
        return self.preset.template.format(
            instruction=self.instruction(item.language), passage=item.passage, question=question, options=options
        )

    def _renderer(self) -> ChatRenderer:
        if self.renderer is None:
            raise SpecError(
                "the prompt uses a chat template but this prompt builder has no chat renderer: "
                "bind it to the model first (builder.bind(renderer))"
            )
        return self.renderer

    def direct(self, item: MCItem) -> str:
        """The direct prompt as the model sees it: under a chat template, the user turn and the
        assistant's final message opened where the model writes its answer."""
        text = self.user_text(item)
        return self._renderer().answer_prompt(text) if self.chat_template else text

    def label_delimiter(self) -> str:
        """Between the prompt and the label: the preset's, except under a chat template, where
        the label opens the answer (lm-eval's rule: no delimiter unless an answer prefix that
        does not end in whitespace precedes it)."""
        if self.chat is None:
            return self.preset.delimiter
        prefix = str(self.chat.get("answer_prefix") or "")
        return self.preset.delimiter if prefix and not prefix[-1].isspace() else ""

    def continuations(self) -> list[str]:
        """The scored continuations after `direct`: delimiter + label."""
        return [self.label_delimiter() + label for label in self.labels]

    def cot(self, item: MCItem) -> str:
        """The prompt that asks for reasoning (the cue ends the user turn under a chat template,
        and the model opens its reply the way its family does)."""
        text = self.user_text(item) + self.preset.cot_cue
        return self._renderer().generation_prompt(text) if self.chat_template else text

    def after_reasoning(self, cot_prompt: str, reasoning: str) -> str:
        """The CoT prompt, the generated reasoning and the answer cue, before the label (reasoning
        in plain text; marked reasoning is closed on token ids, relxfer.models.reasoning)."""
        return cot_prompt + reasoning + self.preset.answer_cue

    def cot_continuations(self) -> list[str]:
        """The scored continuations after `after_reasoning` (the answer cue ends mid-sentence)."""
        return [self.preset.delimiter + label for label in self.labels]

    def training_example(self, item: MCItem, renderer: ChatRenderer | None = None) -> tuple[str, str]:
        """(prompt, gold completion) for fine-tuning: exactly what evaluation scores, and under a
        chat template the answer closed as the family closes it (label, then its end token)."""
        builder = self.bind(renderer) if renderer is not None else self
        completion = builder.continuations()[item.gold]
        if builder.chat_template:
            completion += builder._renderer().end_text
        return builder.direct(item), completion


# ---------------------------------------------------------------------------------------------
# Versioned answer extractor for generated reasoning. Bump the version whenever what it accepts
# changes: it is logged with every CoT record.
#   1. The last "answer is X" / "answer: X" (the word "answer" in any case, optionally bold or
#      parenthesised label) wins. The label must match exactly (case-sensitive), so with labels
#      A-D "the answer is a bit unclear" is not read as A, and must not run on into a word or a
#      number ("answer: 12", "answer is 1.5").
#   2. Otherwise a lone label on the final non-empty line ("3", "(3)", "3.").
#   3. Otherwise a parse failure (None): it never earns chance credit.
EXTRACTOR_VERSION = "answer-extractor@2"


def extract_answer(text: str, labels: tuple[str, ...]) -> int | None:
    """Index of the label the generated text commits to, or None when it commits to none."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    cue = re.compile(rf"(?i:\banswer)(?:\s+(?i:is))?\s*[:\-]?\s*[*_]*\s*\(?\s*({alternatives})\s*\)?(?![\w]|[.,]\d)")
    matches = cue.findall(text)
    if matches:
        return labels.index(matches[-1])
    lines = [line.strip().strip("*.):(").strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[-1] in labels:
        return labels.index(lines[-1])
    return None
